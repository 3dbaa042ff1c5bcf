// ferry's few Linux system calls and CPU loops that Node does not offer.
//
// startWriteback(fd, offset, length, callback): sync_file_range(fd, offset,
// length, SYNC_FILE_RANGE_WRITE) on a thread of libuv's pool (length 0: to the
// end of the file); the callback gets null, or the errno when it failed.
// It asks the kernel to begin writing those dirty pages now, without waiting
// for them and without committing the journal (git's core.fsyncMethod=batch
// does the same): files written this way and fsynced at the end find most of
// their data already on the disk, and the disk writes while ferry computes.
// It is a hint; durability still comes from fsync.
//
// scryptRomix(lanes, N, r, callback): scrypt's ROMix (RFC 7914, section 5)
// on each 128*r-byte lane of `lanes`, in place, on a thread of libuv's pool. Node's
// crypto.scrypt computes the p lanes of a derivation one after the other on
// one thread; with this, vault/scrypt.ts runs them on all the cores and does the
// two PBKDF2 steps around them itself. Same parameters, same result, same
// work for anyone guessing passphrases; less waiting for the one who knows it.
//
// mapRange(fd, offset, length, file) / unmapRange(buffer) / prefetch(fd,
// offset, length, callback): a read-only view of a file's bytes straight from
// the page cache (mmap), so a seal worker compresses a VHD's block where the
// kernel holds it instead of having it copied into a buffer first (that copy
// and the fresh pages it lands in were a fifth of a store's CPU). A file that
// another program truncates under a mapping would raise SIGBUS: ferry's
// handler then prints one line naming the file and exits 1 (nothing of the
// store is committed; the next run sweeps what it left).
//
// gcm(encrypt, key, nonce, aad, input, out, tag): AES-256-GCM through the
// OpenSSL inside Node (its symbols, found at run time: without them the call
// is absent and ferry uses node:crypto), writing into the caller's buffer.
// node:crypto's update() returns a fresh zeroed buffer for every call, which
// the sealer then copied into the object: a third of a seal worker's time.
//
// Further down, each with its own comment: scanFolder, sha256Chunks,
// readFiles (small files read and hashed in batches), sealObject and
// openObject (whole sealed objects, with the system's libzstd), putFile (a
// file written whole and renamed into place in one trip to the pool),
// startWriter (the restore's file writer, a thread of its own) and
// mallocTune (glibc's arenas and mmap threshold, set by the command line).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <dlfcn.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <dirent.h>
#include <node_api.h>

/* ---- scrypt's ROMix (RFC 7914): Salsa20/8, BlockMix, ROMix ---- */

#define ROTL(a, b) (((a) << (b)) | ((a) >> (32 - (b))))

static inline uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline void put_le32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }

/*
 * Inside ROMix every 64-byte block is kept with its 16 words in the order
 * 0 5 10 15, 4 9 14 3, 8 13 2 7, 12 1 6 11 (the diagonals of Salsa20's 4x4
 * matrix): Salsa20's column quarter-rounds then work on four words at once in
 * 128-bit vectors, and a lane rotation of three of the vectors turns rows into
 * columns. XOR, copy and add are word by word, so they do not mind the order,
 * and Integerify's word 0 stays at 0. The lane is put in this order on the way
 * in and back on the way out.
 */
static const uint8_t ORDER[16] = {0, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12, 1, 6, 11};

#if defined(__GNUC__) && !defined(__clang__)
typedef uint32_t v4u __attribute__((vector_size(16)));
#define VROTL(a, b) (((a) << (b)) | ((a) >> (32 - (b))))
/* B = B + Salsa20/8(B), B in diagonal order */
static void salsa20_8(uint32_t B[16]) {
  v4u X0, X1, X2, X3;
  memcpy(&X0, B, 16); memcpy(&X1, B + 4, 16); memcpy(&X2, B + 8, 16); memcpy(&X3, B + 12, 16);
  const v4u s0 = X0, s1 = X1, s2 = X2, s3 = X3;
  const v4u left1 = {1, 2, 3, 0}, half = {2, 3, 0, 1}, right1 = {3, 0, 1, 2};
  for (int i = 8; i > 0; i -= 2) {
    /* columns: X0 = (0 5 10 15), X1 = (4 9 14 3), X2 = (8 13 2 7), X3 = (12 1 6 11) */
    X1 ^= VROTL(X0 + X3, 7);
    X2 ^= VROTL(X1 + X0, 9);
    X3 ^= VROTL(X2 + X1, 13);
    X0 ^= VROTL(X3 + X2, 18);
    /* rows: X3 -> (1 6 11 12), X2 -> (2 7 8 13), X1 -> (3 4 9 14) */
    X3 = __builtin_shuffle(X3, left1);
    X2 = __builtin_shuffle(X2, half);
    X1 = __builtin_shuffle(X1, right1);
    X3 ^= VROTL(X0 + X1, 7);
    X2 ^= VROTL(X3 + X0, 9);
    X1 ^= VROTL(X2 + X3, 13);
    X0 ^= VROTL(X1 + X2, 18);
    X3 = __builtin_shuffle(X3, right1);
    X2 = __builtin_shuffle(X2, half);
    X1 = __builtin_shuffle(X1, left1);
  }
  X0 += s0; X1 += s1; X2 += s2; X3 += s3;
  memcpy(B, &X0, 16); memcpy(B + 4, &X1, 16); memcpy(B + 8, &X2, 16); memcpy(B + 12, &X3, 16);
}
#else
/* B = B + Salsa20/8(B), B in diagonal order (plain C: each word by name) */
static void salsa20_8(uint32_t B[16]) {
  uint32_t x[16];
  for (int k = 0; k < 16; k++) x[ORDER[k]] = B[k];
  uint32_t in[16];
  memcpy(in, x, sizeof in);
  for (int i = 8; i > 0; i -= 2) {
    x[4] ^= ROTL(x[0] + x[12], 7);   x[8] ^= ROTL(x[4] + x[0], 9);
    x[12] ^= ROTL(x[8] + x[4], 13);  x[0] ^= ROTL(x[12] + x[8], 18);
    x[9] ^= ROTL(x[5] + x[1], 7);    x[13] ^= ROTL(x[9] + x[5], 9);
    x[1] ^= ROTL(x[13] + x[9], 13);  x[5] ^= ROTL(x[1] + x[13], 18);
    x[14] ^= ROTL(x[10] + x[6], 7);  x[2] ^= ROTL(x[14] + x[10], 9);
    x[6] ^= ROTL(x[2] + x[14], 13);  x[10] ^= ROTL(x[6] + x[2], 18);
    x[3] ^= ROTL(x[15] + x[11], 7);  x[7] ^= ROTL(x[3] + x[15], 9);
    x[11] ^= ROTL(x[7] + x[3], 13);  x[15] ^= ROTL(x[11] + x[7], 18);
    x[1] ^= ROTL(x[0] + x[3], 7);    x[2] ^= ROTL(x[1] + x[0], 9);
    x[3] ^= ROTL(x[2] + x[1], 13);   x[0] ^= ROTL(x[3] + x[2], 18);
    x[6] ^= ROTL(x[5] + x[4], 7);    x[7] ^= ROTL(x[6] + x[5], 9);
    x[4] ^= ROTL(x[7] + x[6], 13);   x[5] ^= ROTL(x[4] + x[7], 18);
    x[11] ^= ROTL(x[10] + x[9], 7);  x[8] ^= ROTL(x[11] + x[10], 9);
    x[9] ^= ROTL(x[8] + x[11], 13);  x[10] ^= ROTL(x[9] + x[8], 18);
    x[12] ^= ROTL(x[15] + x[14], 7); x[13] ^= ROTL(x[12] + x[15], 9);
    x[14] ^= ROTL(x[13] + x[12], 13); x[15] ^= ROTL(x[14] + x[13], 18);
  }
  for (int k = 0; k < 16; k++) B[k] = x[ORDER[k]] + in[ORDER[k]];
}
#endif

/* Y = BlockMix(B): 2r 64-byte blocks; even results first, then odd. */
static void block_mix(const uint32_t *B, uint32_t *Y, uint32_t r) {
  uint32_t X[16];
  memcpy(X, &B[(2 * r - 1) * 16], 64);
  for (uint32_t i = 0; i < 2 * r; i++) {
    for (int k = 0; k < 16; k++) X[k] ^= B[i * 16 + k];
    salsa20_8(X);
    memcpy(&Y[((i & 1) * r + i / 2) * 16], X, 64);
  }
}

static void wipe(void *p, size_t n) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
  explicit_bzero(p, n);
#else
  volatile uint8_t *v = p;
  while (n--) *v++ = 0;
#endif
}

/* One lane in place (128*r bytes), with the table V (128*r*N bytes) and two blocks X, Y of 128*r bytes as scratch. */
static void romix(uint8_t *lane, uint64_t N, uint32_t r, uint32_t *V, uint32_t *X, uint32_t *Y) {
  size_t words = 32 * (size_t)r;
  for (size_t k = 0; k < words; k++) X[k] = le32(lane + 4 * ((k & ~(size_t)15) + ORDER[k & 15]));
  for (uint64_t i = 0; i < N; i++) {
    memcpy(&V[i * words], X, words * sizeof(uint32_t));
    block_mix(X, Y, r);
    uint32_t *t = X; X = Y; Y = t;
  }
  for (uint64_t i = 0; i < N; i++) {
    uint64_t j = X[(2 * r - 1) * 16] & (N - 1); /* Integerify mod N (N is a power of two) */
    const uint32_t *v = &V[j * words];
    for (size_t k = 0; k < words; k++) X[k] ^= v[k];
    block_mix(X, Y, r);
    uint32_t *t = X; X = Y; Y = t;
  }
  for (size_t k = 0; k < words; k++) put_le32(lane + 4 * ((k & ~(size_t)15) + ORDER[k & 15]), X[k]);
}

/*
 * `count` lanes one after the other with one table: a fresh 32 MiB costs as
 * much to fault in as a third of a lane's work, so a thread reuses its table
 * (huge pages where the kernel gives them) and wipes it once at the end, as
 * what it held derives from the passphrase. 0, or ENOMEM.
 */
static int romix_lanes(uint8_t *lanes, uint32_t count, uint64_t N, uint32_t r) {
  size_t laneBytes = 128 * (size_t)r;
  if (N > (SIZE_MAX - 2 * laneBytes) / laneBytes) return ENOMEM;
  size_t tableBytes = laneBytes * N;
  size_t mapped = tableBytes + 2 * laneBytes;
  void *mem = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return ENOMEM;
#ifdef MADV_HUGEPAGE
  if (tableBytes >= (4u << 20)) madvise(mem, mapped, MADV_HUGEPAGE); /* a hint: fewer faults and TLB misses */
#endif
  uint32_t *V = mem, *X = (uint32_t *)((uint8_t *)mem + tableBytes), *Y = X + laneBytes / 4;
  for (uint32_t i = 0; i < count; i++) romix(lanes + i * laneBytes, N, r, V, X, Y);
  wipe(mem, mapped);
  munmap(mem, mapped);
  return 0;
}

/* ---- calls that run on libuv's pool and call back with null or an errno ---- */

typedef struct PoolJob PoolJob;
struct PoolJob {
  napi_async_work work;
  napi_ref callback;
  napi_ref hold;             /* a value kept alive while a pool thread uses its memory, or NULL */
  void (*execute)(PoolJob *); /* on the pool thread: does the work, sets err */
  napi_value (*result)(napi_env, PoolJob *); /* when set and no err: the callback's second argument */
  void (*release)(PoolJob *); /* when set: frees what execute left, last */
  int err;
};

static void pool_execute(napi_env env, void *data) {
  (void)env;
  PoolJob *job = data;
  job->err = 0;
  job->execute(job);
}

static void pool_complete(napi_env env, napi_status status, void *data) {
  PoolJob *job = data;
  napi_value cb, undef, args[2], ignored;
  size_t argc = 1;
  if (status != napi_ok) job->err = ECANCELED;
  if (!job->err && job->result) {
    args[1] = job->result(env, job);
    if (args[1] == NULL) job->err = ENOMEM;
    else argc = 2;
  }
  if (napi_get_reference_value(env, job->callback, &cb) == napi_ok && cb != NULL && napi_get_undefined(env, &undef) == napi_ok &&
      (job->err ? napi_create_int32(env, job->err, &args[0]) : napi_get_null(env, &args[0])) == napi_ok) {
    napi_call_function(env, undef, cb, job->err ? 1 : argc, args, &ignored);
  }
  if (job->release) job->release(job);
  napi_delete_reference(env, job->callback);
  if (job->hold) napi_delete_reference(env, job->hold);
  napi_delete_async_work(env, job->work);
  free(job);
}

/* Queues `job` (calloc'd, its PoolJob first); on failure throws and frees it. */
static void queue_job(napi_env env, const char *name, PoolJob *job, void (*execute)(PoolJob *), napi_value callback, napi_value hold) {
  napi_value resource;
  job->execute = execute;
  if (napi_create_reference(env, callback, 1, &job->callback) != napi_ok) {
    if (job->release) job->release(job);
    free(job);
    napi_throw_error(env, NULL, "ferry native: cannot hold the callback");
    return;
  }
  if ((hold && napi_create_reference(env, hold, 1, &job->hold) != napi_ok) ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource) != napi_ok ||
      napi_create_async_work(env, NULL, resource, pool_execute, pool_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    if (job->work) napi_delete_async_work(env, job->work);
    if (job->hold) napi_delete_reference(env, job->hold);
    napi_delete_reference(env, job->callback);
    if (job->release) job->release(job);
    free(job);
    napi_throw_error(env, NULL, "ferry native: cannot queue the work");
  }
}

/* Reads (fd, offset, length[, callback]) as the file calls take them; false after throwing `usage`. */
static bool file_args(napi_env env, napi_value *argv, size_t argc, size_t want, int32_t *fd, int64_t *offset, int64_t *length, const char *usage) {
  napi_valuetype cbType = napi_undefined;
  if (argc >= want && want == 4) napi_typeof(env, argv[3], &cbType);
  if (argc < want || (want == 4 && cbType != napi_function) || napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], offset) != napi_ok || napi_get_value_int64(env, argv[2], length) != napi_ok || *fd < 0 || *offset < 0 ||
      *length < 0) {
    napi_throw_type_error(env, NULL, usage);
    return false;
  }
  return true;
}

/* ---- early write-back ---- */

typedef struct {
  PoolJob base;
  int fd;
  int64_t offset, length;
} FileJob;

static void writeback_execute(PoolJob *j) {
  FileJob *job = (FileJob *)j;
#ifdef __linux__
  if (sync_file_range(job->fd, job->offset, job->length, SYNC_FILE_RANGE_WRITE) != 0) j->err = errno;
#else
  j->err = ENOSYS;
#endif
}

/* A FileJob from (fd, offset, length, callback), queued; NULL after throwing. */
static napi_value queue_file_job(napi_env env, napi_callback_info info, const char *name, void (*execute)(PoolJob *), const char *usage) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  int64_t offset, length;
  if (!file_args(env, argv, argc, 4, &fd, &offset, &length, usage)) return NULL;
  FileJob *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  job->fd = fd;
  job->offset = offset;
  job->length = length;
  queue_job(env, name, &job->base, execute, argv[3], NULL);
  return NULL;
}

static napi_value start_writeback(napi_env env, napi_callback_info info) {
  return queue_file_job(env, info, "ferry:startWriteback", writeback_execute, "startWriteback(fd, offset, length, callback)");
}

// startWritebackSync(fd, offset, length): the same, on the calling thread
// (a worker thread that writes with synchronous calls); returns 0 or the errno.
static napi_value start_writeback_sync(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  int64_t offset, length;
  if (!file_args(env, argv, argc, 3, &fd, &offset, &length, "startWritebackSync(fd, offset, length)")) return NULL;
  int err = 0;
#ifdef __linux__
  if (sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0) err = errno;
#else
  err = ENOSYS;
#endif
  napi_create_int32(env, err, &result);
  return result;
}

/*
 * futimens(fd, atimeSec, atimeNsec, mtimeSec, mtimeNsec): both times of an
 * open file to the nanosecond (Node's futimes takes microseconds), on the
 * calling thread; 0 or the errno. The restore's writer thread sets each
 * file's times through its descriptor before closing it.
 */
static napi_value fd_utimens(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], result;
  int32_t fd;
  int64_t v[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool ok = argc >= 5 && napi_get_value_int32(env, argv[0], &fd) == napi_ok && fd >= 0;
  for (int i = 0; ok && i < 4; i++) ok = napi_get_value_int64(env, argv[1 + i], &v[i]) == napi_ok;
  if (!ok || v[1] < 0 || v[1] > 999999999 || v[3] < 0 || v[3] > 999999999) {
    napi_throw_type_error(env, NULL, "futimens(fd, atimeSec, atimeNsec 0..999999999, mtimeSec, mtimeNsec 0..999999999)");
    return NULL;
  }
  struct timespec ts[2] = {{.tv_sec = (time_t)v[0], .tv_nsec = (long)v[1]}, {.tv_sec = (time_t)v[2], .tv_nsec = (long)v[3]}};
  napi_create_int32(env, futimens(fd, ts) == 0 ? 0 : errno, &result);
  return result;
}

typedef struct {
  PoolJob base;
  uint8_t *data;
  uint64_t N;
  uint32_t r;
  uint32_t count;
} RomixJob;

static void romix_execute(PoolJob *j) {
  RomixJob *job = (RomixJob *)j;
  j->err = romix_lanes(job->data, job->count, job->N, job->r);
}

// scryptRomix(lanes: Uint8Array of k*128*r bytes, N: power of two >= 2, r >= 1, callback(errno|null)):
// ROMix on each of the k lanes in place, one after the other, on one pool thread.
static napi_value scrypt_romix(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_valuetype cbType = napi_undefined;
  bool isTyped = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc == 4) {
    napi_typeof(env, argv[3], &cbType);
    napi_is_typedarray(env, argv[0], &isTyped);
  }
  napi_typedarray_type type;
  size_t length = 0, byteOffset = 0;
  void *base = NULL;
  napi_value arraybuffer;
  int64_t N = 0;
  uint32_t r = 0;
  if (argc < 4 || cbType != napi_function || !isTyped ||
      napi_get_typedarray_info(env, argv[0], &type, &length, &base, &arraybuffer, &byteOffset) != napi_ok || type != napi_uint8_array ||
      napi_get_value_int64(env, argv[1], &N) != napi_ok || napi_get_value_uint32(env, argv[2], &r) != napi_ok ||
      N < 2 || (N & (N - 1)) != 0 || r < 1 || r > (1u << 24) || (r < 4 && ((uint64_t)N >> (16 * r)) != 0) /* RFC 7914: N < 2^(16r) */ || length == 0 || length % (128 * (size_t)r) != 0 ||
      length / (128 * (size_t)r) > UINT32_MAX || base == NULL) {
    napi_throw_type_error(env, NULL, "scryptRomix(lanes of 128*r bytes each, N a power of two, r, callback)");
    return NULL;
  }
  RomixJob *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "scryptRomix: out of memory");
    return NULL;
  }
  job->data = base;
  job->N = (uint64_t)N;
  job->r = r;
  job->count = (uint32_t)(length / (128 * (size_t)r));
  queue_job(env, "ferry:scryptRomix", &job->base, romix_execute, argv[3], argv[0]); /* (the lanes stay alive: a pool thread writes them) */
  return NULL;
}

/* ---- mapped file ranges ---- */

typedef struct {
  void *base;        /* what mmap gave */
  size_t mapped;     /* its length */
  uint8_t *data;     /* the caller's first byte (base + offset within the page) */
  bool unmapped;
} Mapping;

#define MAX_MAPPINGS 256
#define MAX_MAP_BYTES ((int64_t)1 << 30)
#define NAME_MAX_BYTES 512
/* What the SIGBUS handler reads: written under the lock, read without it. */
static struct {
  volatile uintptr_t start, end;
  char name[NAME_MAX_BYTES];
} live[MAX_MAPPINGS];
static Mapping *liveOwner[MAX_MAPPINGS];
static pthread_mutex_t liveLock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction previousBus;
static bool busInstalled = false;

/* Set by errorsAsJson(): the SIGBUS handler also writes the error document --json promises on stdout. */
static volatile sig_atomic_t busJson = 0;

#define BUS_WHY " could not be read where ferry had it mapped (another program made it shorter, or the disk failed to read it); stopped, nothing of this run was committed: run again when nothing writes to it, and check the disk if it happens again"

/* The document report() writes for an error under --json, for SOURCE_CHANGED on `name` (async-signal-safe: no allocation). */
static void bus_json(const char *name) {
  static const char head[] = "{\n  \"error\": {\n    \"code\": \"SOURCE_CHANGED\",\n    \"message\": \"", tail[] = BUS_WHY "\"\n  }\n}\n";
  char buf[NAME_MAX_BYTES * 6];
  size_t n = 0;
  for (size_t i = 0; i < NAME_MAX_BYTES && name[i]; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c == '"' || c == '\\') buf[n++] = '\\', buf[n++] = (char)c;
    else if (c < 0x20) {
      static const char hex[] = "0123456789abcdef";
      buf[n++] = '\\', buf[n++] = 'u', buf[n++] = '0', buf[n++] = '0', buf[n++] = hex[c >> 4], buf[n++] = hex[c & 15];
    } else buf[n++] = (char)c;
  }
  ssize_t ignored = write(1, head, sizeof head - 1);
  ignored = write(1, buf, n);
  ignored = write(1, tail, sizeof tail - 1);
  (void)ignored;
}

static void on_bus(int sig, siginfo_t *si, void *ctx) {
  uintptr_t at = (uintptr_t)si->si_addr;
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    if (live[i].start != 0 && at >= live[i].start && at < live[i].end) {
      static const char a[] = "ferry: ", b[] = BUS_WHY "\n";
      if (busJson) bus_json(live[i].name);
      ssize_t ignored = write(2, a, sizeof a - 1);
      ignored = write(2, live[i].name, strnlen(live[i].name, NAME_MAX_BYTES));
      ignored = write(2, b, sizeof b - 1);
      (void)ignored;
      _exit(1);
    }
  }
  /* not ours: whoever handled it before, or the default (a core dump) */
  if (previousBus.sa_flags & SA_SIGINFO) {
    if (previousBus.sa_sigaction) {
      previousBus.sa_sigaction(sig, si, ctx);
      return;
    }
  } else if (previousBus.sa_handler != SIG_DFL && previousBus.sa_handler != SIG_IGN) {
    previousBus.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

static void install_bus_handler(void) {
  if (busInstalled) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_bus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &previousBus) == 0) busInstalled = true;
}

/* Under liveLock. -1 when full. */
static int live_add(Mapping *m, const char *name) {
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    if (liveOwner[i] == NULL) {
      liveOwner[i] = m;
      snprintf(live[i].name, NAME_MAX_BYTES, "%s", name);
      live[i].end = (uintptr_t)m->base + m->mapped;
      __atomic_store_n(&live[i].start, (uintptr_t)m->base, __ATOMIC_RELEASE);
      return i;
    }
  }
  return -1;
}

/* Unmaps once; under liveLock. */
static void live_unmap(Mapping *m) {
  if (m->unmapped) return;
  for (int i = 0; i < MAX_MAPPINGS; i++) {
    if (liveOwner[i] == m) {
      __atomic_store_n(&live[i].start, 0, __ATOMIC_RELEASE);
      live[i].end = 0;
      liveOwner[i] = NULL;
    }
  }
  munmap(m->base, m->mapped);
  m->unmapped = true;
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  Mapping *m = hint;
  pthread_mutex_lock(&liveLock);
  live_unmap(m);
  pthread_mutex_unlock(&liveLock);
  free(m);
}

// mapRange(fd, offset, length, file): a Buffer over those bytes of the file, read-only,
// or the errno (a number) when the file cannot be mapped (the caller reads instead).
static napi_value map_range(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  int64_t offset, length;
  char name[NAME_MAX_BYTES];
  size_t nameLen = 0;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok || napi_get_value_string_utf8(env, argv[3], name, sizeof name, &nameLen) != napi_ok ||
      fd < 0 || offset < 0 || length <= 0) {
    napi_throw_type_error(env, NULL, "mapRange(fd, offset, length > 0, file)");
    return NULL;
  }
  if (length > MAX_MAP_BYTES) {
    /* (far below what a Buffer may hold on any Node: node::Buffer::New, refusing one
       too long, would call the finalizer before returning) the caller reads instead */
    napi_create_int32(env, EFBIG, &result);
    return result;
  }
  long page = sysconf(_SC_PAGESIZE);
  int64_t start = offset - offset % page;
  size_t mapped = (size_t)(offset - start) + (size_t)length;
  Mapping *m = calloc(1, sizeof *m);
  if (!m) {
    napi_create_int32(env, ENOMEM, &result);
    return result;
  }
  void *p = mmap(NULL, mapped, PROT_READ, MAP_SHARED, fd, start);
  if (p == MAP_FAILED) {
    int err = errno;
    free(m);
    napi_create_int32(env, err, &result);
    return result;
  }
  madvise(p, mapped, MADV_WILLNEED); /* the whole range at once, read ahead of the first touch */
  m->base = p;
  m->mapped = mapped;
  m->data = (uint8_t *)p + (offset - start);
  pthread_mutex_lock(&liveLock);
  install_bus_handler();
  int slot = busInstalled ? live_add(m, name) : -1;
  pthread_mutex_unlock(&liveLock);
  if (slot < 0 || napi_create_external_buffer(env, (size_t)length, m->data, mapping_finalize, m, &result) != napi_ok) {
    /* (without the handler, or too many at once: the caller reads instead) */
    pthread_mutex_lock(&liveLock);
    live_unmap(m);
    pthread_mutex_unlock(&liveLock);
    free(m);
    napi_create_int32(env, slot < 0 ? EMFILE : EIO, &result);
  }
  return result;
}

// unmapRange(buffer from mapRange): empties the buffer (and every view of it) and unmaps it now.
// errorsAsJson(on): a file cut short under a mapping is also reported as --json's error document on stdout.
static napi_value errors_as_json(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool on = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    napi_throw_type_error(env, NULL, "errorsAsJson(on: boolean)");
    return NULL;
  }
  busJson = on;
  return NULL;
}

static napi_value unmap_range(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], arraybuffer;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool isTyped = false;
  if (argc == 1) napi_is_typedarray(env, argv[0], &isTyped);
  napi_typedarray_type type;
  size_t length = 0, byteOffset = 0;
  void *data = NULL;
  if (!isTyped || napi_get_typedarray_info(env, argv[0], &type, &length, &data, &arraybuffer, &byteOffset) != napi_ok) {
    napi_throw_type_error(env, NULL, "unmapRange(buffer from mapRange)");
    return NULL;
  }
  uint8_t *first = (uint8_t *)data - byteOffset;
  Mapping *m = NULL;
  pthread_mutex_lock(&liveLock);
  for (int i = 0; i < MAX_MAPPINGS && first != NULL; i++) {
    if (liveOwner[i] != NULL && liveOwner[i]->data == first) m = liveOwner[i];
  }
  if (m && napi_detach_arraybuffer(env, arraybuffer) == napi_ok) live_unmap(m); /* (no JS view can reach it now) */
  pthread_mutex_unlock(&liveLock);
  return NULL;
}

static void prefetch_execute(PoolJob *j) {
  FileJob *job = (FileJob *)j;
  int err = posix_fadvise(job->fd, job->offset, job->length, POSIX_FADV_WILLNEED);
  j->err = err;
}

// prefetch(fd, offset, length, callback): starts reading those bytes into the page cache
// (posix_fadvise WILLNEED, on libuv's pool: it may wait to queue the reads); a hint.
static napi_value prefetch(napi_env env, napi_callback_info info) {
  return queue_file_job(env, info, "ferry:prefetch", prefetch_execute, "prefetch(fd, offset, length, callback)");
}

/* ---- a folder listed and its entries lstat'd, in one call on the pool ---- */

/*
 * scanFolder(path, mode, names, callback): callback(errno) when the folder
 * cannot be opened or read, else callback(null, buffer). The folder is
 * opened with O_NOFOLLOW (a folder swapped for a symlink since it was listed
 * gives ELOOP: it is not followed) and its entries are lstat'd relative to
 * it (fstatat). mode SCAN_ALL lists it and stats every entry; SCAN_LIST
 * only lists (the caller leaves some out: an excluded mount that hangs is
 * never touched); SCAN_GIVEN stats `names` (NUL-terminated, packed) alone.
 * The reply:
 *   f64 count, i64 the folder's dev, i64 its ino (as opened), then count
 *   records of SCAN_NUM doubles (name offset, name length, errno of its
 *   lstat or 0 (-1: a time beyond int64 nanoseconds; -2: not stat'd), mode,
 *   uid, gid, nlink, size), then count records of SCAN_BIG int64s (blocks,
 *   ino, dev, rdev, atime, mtime and ctime in nanoseconds), then the names.
 * Listed names are sorted by their bytes, as Buffer.compare sorts them.
 * One pool round trip per folder instead of one per entry, and no stat
 * object per entry on the main thread.
 */
enum { SCAN_NUM = 8, SCAN_BIG = 7, SCAN_HEAD = 24 };
enum { SCAN_ALL = 0, SCAN_LIST = 1, SCAN_GIVEN = 2 };

typedef struct {
  PoolJob base;
  char *path;
  int mode;
  char *names;     /* NUL-terminated names, packed */
  size_t namesLen, namesCap;
  size_t *offsets; /* where each name starts in names */
  size_t count, cap;
  uint8_t *out;    /* the reply, built on the pool thread */
  size_t outLen;
} ScanJob;

static bool bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *length);

static int by_name(const void *a, const void *b, void *names) {
  return strcmp((const char *)names + *(const size_t *)a, (const char *)names + *(const size_t *)b);
}

static bool ns_of(struct timespec t, int64_t *ns) {
  int64_t s;
  return !__builtin_mul_overflow((int64_t)t.tv_sec, (int64_t)1000000000, &s) && !__builtin_add_overflow(s, (int64_t)t.tv_nsec, ns);
}

/* Adds a name (with its NUL) to the job's list; false when out of memory. */
static bool scan_add(ScanJob *job, const char *name, size_t len) {
  if (job->namesLen + len > job->namesCap) {
    size_t cap = job->namesCap ? job->namesCap * 2 : 4096;
    while (cap < job->namesLen + len) cap *= 2;
    char *n = realloc(job->names, cap);
    if (!n) return false;
    job->names = n, job->namesCap = cap;
  }
  if (job->count == job->cap) {
    size_t cap = job->cap ? job->cap * 2 : 64;
    size_t *o = realloc(job->offsets, cap * sizeof *o);
    if (!o) return false;
    job->offsets = o, job->cap = cap;
  }
  memcpy(job->names + job->namesLen, name, len);
  job->offsets[job->count++] = job->namesLen;
  job->namesLen += len;
  return true;
}

/* Lists the folder open at dfd into the job; 0 or an errno. closedir() closes dfd too, so it is dup'd. */
static int scan_list(ScanJob *job, int dfd) {
  int fd2 = dup(dfd);
  if (fd2 < 0) return errno;
  DIR *dir = fdopendir(fd2);
  if (!dir) {
    int e = errno;
    close(fd2);
    return e;
  }
  int err = 0;
  for (;;) {
    errno = 0;
    struct dirent *d = readdir(dir);
    if (!d) {
      err = errno;
      break;
    }
    if (d->d_name[0] == '.' && (d->d_name[1] == 0 || (d->d_name[1] == '.' && d->d_name[2] == 0))) continue;
    if (!scan_add(job, d->d_name, strlen(d->d_name) + 1)) {
      err = ENOMEM;
      break;
    }
  }
  closedir(dir);
  if (!err && job->count > 1) qsort_r(job->offsets, job->count, sizeof *job->offsets, by_name, job->names);
  return err;
}

static void scan_execute(PoolJob *j) {
  ScanJob *job = (ScanJob *)j;
  int dfd = open(job->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat self;
  if (dfd < 0) {
    j->err = errno;
    return;
  }
  if (fstat(dfd, &self) != 0) j->err = errno;
  if (!j->err && job->mode != SCAN_GIVEN) j->err = scan_list(job, dfd);
  size_t n = job->count, numBytes = SCAN_HEAD + n * SCAN_NUM * 8, bigBytes = n * SCAN_BIG * 8;
  if (!j->err) {
    job->outLen = numBytes + bigBytes + job->namesLen;
    job->out = malloc(job->outLen);
    if (!job->out) j->err = ENOMEM;
  }
  if (!j->err) {
    double *num = (double *)(job->out + SCAN_HEAD);
    int64_t *big = (int64_t *)(job->out + numBytes);
    char *names = (char *)job->out + numBytes + bigBytes;
    size_t at = 0;
    ((double *)job->out)[0] = (double)n;
    ((int64_t *)job->out)[1] = (int64_t)self.st_dev;
    ((int64_t *)job->out)[2] = (int64_t)self.st_ino;
    for (size_t i = 0; i < n; i++) {
      const char *name = job->names + job->offsets[i];
      size_t len = strlen(name);
      double *r = num + i * SCAN_NUM;
      int64_t *b = big + i * SCAN_BIG;
      memcpy(names + at, name, len);
      r[0] = (double)at;
      r[1] = (double)len;
      at += len;
      struct stat st;
      memset(b, 0, SCAN_BIG * 8);
      for (int k = 3; k < SCAN_NUM; k++) r[k] = 0;
      if (job->mode == SCAN_LIST) {
        r[2] = -2;
        continue;
      }
      if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        r[2] = errno;
        continue;
      }
      r[2] = 0;
      r[3] = st.st_mode;
      r[4] = st.st_uid;
      r[5] = st.st_gid;
      r[6] = (double)st.st_nlink;
      r[7] = (double)st.st_size;
      b[0] = (int64_t)st.st_blocks;
      /* as Node gives them: 64-bit signed */
      b[1] = (int64_t)st.st_ino;
      b[2] = (int64_t)st.st_dev;
      b[3] = (int64_t)st.st_rdev;
      if (!ns_of(st.st_atim, &b[4]) || !ns_of(st.st_mtim, &b[5]) || !ns_of(st.st_ctim, &b[6])) r[2] = -1;
    }
    job->outLen = numBytes + bigBytes + at;
  }
  close(dfd);
}

static napi_value scan_result(napi_env env, PoolJob *j) {
  ScanJob *job = (ScanJob *)j;
  napi_value buf;
  void *copy;
  if (napi_create_buffer_copy(env, job->outLen, job->out, &copy, &buf) != napi_ok) return NULL;
  return buf;
}

static void scan_release(PoolJob *j) {
  ScanJob *job = (ScanJob *)j;
  free(job->path);
  free(job->names);
  free(job->offsets);
  free(job->out);
}

static napi_value scan_dir(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_valuetype cbType = napi_undefined, namesType = napi_undefined;
  uint8_t *path, *given = NULL;
  size_t pathLen, givenLen = 0;
  int32_t mode = -1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 4) napi_typeof(env, argv[3], &cbType), napi_typeof(env, argv[2], &namesType);
  if (argc < 4 || cbType != napi_function || !bytes_of(env, argv[0], &path, &pathLen) || memchr(path, 0, pathLen) ||
      napi_get_value_int32(env, argv[1], &mode) != napi_ok || mode < SCAN_ALL || mode > SCAN_GIVEN ||
      (mode == SCAN_GIVEN ? !bytes_of(env, argv[2], &given, &givenLen) || (givenLen && given[givenLen - 1] != 0) : namesType != napi_null)) {
    napi_throw_type_error(env, NULL, "scanFolder(path: Buffer, mode: 0 | 1 | 2, names: Buffer (mode 2) or null, callback)");
    return NULL;
  }
  ScanJob *job = calloc(1, sizeof *job);
  if (job) job->path = malloc(pathLen + 1);
  if (!job || !job->path) {
    free(job);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  memcpy(job->path, path, pathLen);
  job->path[pathLen] = 0;
  job->mode = mode;
  job->base.result = scan_result;
  job->base.release = scan_release;
  /* the names to stat, copied now: the pool thread must not read JS memory */
  for (size_t at = 0; at < givenLen;) {
    size_t len = strlen((const char *)given + at) + 1;
    if (!scan_add(job, (const char *)given + at, len)) {
      scan_release(&job->base);
      free(job);
      napi_throw_error(env, NULL, "ferry native: out of memory");
      return NULL;
    }
    at += len;
  }
  queue_job(env, "ferry:scanFolder", &job->base, scan_execute, argv[3], NULL);
  return NULL;
}

/* ---- AES-256-GCM through the OpenSSL Node carries ---- */

typedef void *(*ctx_new_fn)(void);
typedef void (*ctx_free_fn)(void *);
typedef const void *(*cipher_fn)(void);
typedef int (*init_fn)(void *, const void *, void *, const unsigned char *, const unsigned char *);
typedef int (*update_fn)(void *, unsigned char *, int *, const unsigned char *, int);
typedef int (*final_fn)(void *, unsigned char *, int *);
typedef int (*ctrl_fn)(void *, int, int, void *);
#define GCM_SET_IVLEN 0x9 /* EVP_CTRL_AEAD_SET_IVLEN */
#define GCM_GET_TAG 0x10  /* EVP_CTRL_AEAD_GET_TAG */
#define GCM_SET_TAG 0x11  /* EVP_CTRL_AEAD_SET_TAG */

static struct {
  ctx_new_fn ctx_new;
  ctx_free_fn ctx_free;
  cipher_fn aes_256_gcm;
  init_fn enc_init, dec_init;
  update_fn enc_update, dec_update;
  final_fn enc_final, dec_final;
  ctrl_fn ctrl;
  int (*digest)(const void *, size_t, unsigned char *, unsigned int *, const void *, void *);
  const void *(*sha256)(void);
} ossl;

static bool opensslLoaded = false;
static pthread_once_t opensslOnce = PTHREAD_ONCE_INIT;

static void load_openssl(void) {
  void *h = dlopen(NULL, RTLD_NOW); /* node itself, and what it loaded */
  if (!h) return;
#define SYM(field, name) ossl.field = (__typeof__(ossl.field))dlsym(h, name)
  SYM(ctx_new, "EVP_CIPHER_CTX_new");
  SYM(ctx_free, "EVP_CIPHER_CTX_free");
  SYM(aes_256_gcm, "EVP_aes_256_gcm");
  SYM(enc_init, "EVP_EncryptInit_ex");
  SYM(dec_init, "EVP_DecryptInit_ex");
  SYM(enc_update, "EVP_EncryptUpdate");
  SYM(dec_update, "EVP_DecryptUpdate");
  SYM(enc_final, "EVP_EncryptFinal_ex");
  SYM(dec_final, "EVP_DecryptFinal_ex");
  SYM(ctrl, "EVP_CIPHER_CTX_ctrl");
  SYM(digest, "EVP_Digest");
  SYM(sha256, "EVP_sha256");
#undef SYM
  opensslLoaded = ossl.ctx_new && ossl.ctx_free && ossl.aes_256_gcm && ossl.enc_init && ossl.dec_init && ossl.enc_update && ossl.dec_update &&
                  ossl.enc_final && ossl.dec_final && ossl.ctrl;
}

static bool bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *length) {
  bool isTyped = false;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  void *p = NULL;
  if (napi_is_typedarray(env, v, &isTyped) != napi_ok || !isTyped) return false;
  if (napi_get_typedarray_info(env, v, &type, length, &p, &ab, &offset) != napi_ok || type != napi_uint8_array) return false;
  *data = p;
  return true;
}

/*
 * One pass of AES-256-GCM: 1 done (decrypt: the tag matched), 0 the tag did
 * not match (out is zeroed), -1 OpenSSL failed. In place is allowed.
 */
static int gcm_run(bool encrypt, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aadLen, const uint8_t *in, size_t len,
                   uint8_t *out, uint8_t *tag) {
  void *ctx = ossl.ctx_new();
  if (!ctx) return -1;
  int ok = 0, n = 0;
  init_fn init = encrypt ? ossl.enc_init : ossl.dec_init;
  update_fn update = encrypt ? ossl.enc_update : ossl.dec_update;
  if (init(ctx, ossl.aes_256_gcm(), NULL, NULL, NULL) != 1 || ossl.ctrl(ctx, GCM_SET_IVLEN, 12, NULL) != 1 || init(ctx, NULL, NULL, key, nonce) != 1) goto fail;
  if (aadLen > 0 && (aadLen > INT_MAX || update(ctx, NULL, &n, aad, (int)aadLen) != 1)) goto fail;
  for (size_t done = 0; done < len;) {
    size_t step = len - done > (1u << 30) ? (1u << 30) : len - done;
    if (update(ctx, out + done, &n, in + done, (int)step) != 1 || (size_t)n != step) goto fail;
    done += step;
  }
  if (encrypt) {
    if (ossl.enc_final(ctx, out + len, &n) != 1 || n != 0 || ossl.ctrl(ctx, GCM_GET_TAG, 16, tag) != 1) goto fail;
    ok = 1;
  } else {
    if (ossl.ctrl(ctx, GCM_SET_TAG, 16, tag) != 1) goto fail;
    ok = ossl.dec_final(ctx, out + len, &n) == 1 ? 1 : 0;
    if (!ok && len) memset(out, 0, len); /* what a forged object decrypts to is never seen */
  }
  ossl.ctx_free(ctx);
  return ok;
fail:
  ossl.ctx_free(ctx);
  if (!encrypt && len) memset(out, 0, len); /* (nothing half-decrypted is left either) */
  return -1;
}

// gcm(encrypt, key 32, nonce 12, aad, input, out (>= input), tag 16) -> true, or false when a
// decryption's tag does not match (out zeroed); throws when OpenSSL fails.
static napi_value gcm(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool encrypt = false;
  uint8_t *key, *nonce, *aad, *in, *out, *tag;
  size_t keyLen, nonceLen, aadLen, inLen, outLen, tagLen;
  if (argc < 7 || napi_get_value_bool(env, argv[0], &encrypt) != napi_ok || !bytes_of(env, argv[1], &key, &keyLen) ||
      !bytes_of(env, argv[2], &nonce, &nonceLen) || !bytes_of(env, argv[3], &aad, &aadLen) || !bytes_of(env, argv[4], &in, &inLen) ||
      !bytes_of(env, argv[5], &out, &outLen) || !bytes_of(env, argv[6], &tag, &tagLen) || keyLen != 32 || nonceLen != 12 || tagLen != 16 ||
      outLen < inLen) {
    napi_throw_type_error(env, NULL, "gcm(encrypt, key of 32 bytes, nonce of 12, aad, input, out at least as long, tag of 16)");
    return NULL;
  }
  int r = gcm_run(encrypt, key, nonce, aad, aadLen, in, inLen, out, tag);
  if (r < 0) {
    napi_throw_error(env, NULL, "AES-256-GCM failed in OpenSSL");
    return NULL;
  }
  napi_get_boolean(env, r == 1, &result);
  return result;
}

/*
 * sha256Chunks(input, chunk, out): the SHA-256 of each `chunk` bytes of
 * input (the last one shorter) into out, 32 bytes each, on the calling
 * thread; one call per file instead of a Hash object per chunk.
 */
/* The SHA-256 of each `chunk` bytes of `in` (the last one shorter) into out, 32 bytes each; false when OpenSSL fails. */
static bool digest_chunks(const uint8_t *in, size_t inLen, size_t chunk, uint8_t *out) {
  for (size_t at = 0; at < inLen; at += chunk, out += 32) {
    size_t n = inLen - at < chunk ? inLen - at : chunk;
    unsigned int mdLen = 0;
    if (!ossl.digest(in + at, n, out, &mdLen, ossl.sha256(), NULL) || mdLen != 32) return false;
  }
  return true;
}

/* (input, chunk > 0, out of 32 bytes per chunk) as both calls take them; false when they are not that. */
static bool chunk_args(napi_env env, napi_value *argv, uint8_t **in, size_t *inLen, int64_t *chunk, uint8_t **out) {
  size_t outLen;
  return bytes_of(env, argv[0], in, inLen) && napi_get_value_int64(env, argv[1], chunk) == napi_ok && *chunk > 0 && bytes_of(env, argv[2], out, &outLen) &&
         outLen >= (*inLen + (size_t)*chunk - 1) / (size_t)*chunk * 32;
}

static napi_value sha256_chunks(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint8_t *in, *out;
  size_t inLen;
  int64_t chunk;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !chunk_args(env, argv, &in, &inLen, &chunk, &out)) {
    napi_throw_type_error(env, NULL, "sha256Chunks(input, chunk > 0, out of 32 bytes per chunk)");
    return NULL;
  }
  if (!digest_chunks(in, inLen, (size_t)chunk, out)) napi_throw_error(env, NULL, "SHA-256 failed in OpenSSL");
  return NULL;
}

/*
 * sha256ChunksAsync(input, chunk, out, callback): the same on a thread of
 * libuv's pool; calls back with null or an errno (EIO: OpenSSL failed).
 * input and out are the pool thread's until the callback. A seed hashes
 * the chunks of large files this way, on the memory they were read into.
 */
typedef struct {
  PoolJob base;
  const uint8_t *in;
  uint8_t *out;
  size_t inLen, chunk;
} ChunksJob;

static void chunks_execute(PoolJob *j) {
  ChunksJob *job = (ChunksJob *)j;
  if (!digest_chunks(job->in, job->inLen, job->chunk, job->out)) j->err = EIO;
}

static napi_value sha256_chunks_async(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], hold;
  uint8_t *in, *out;
  size_t inLen;
  int64_t chunk;
  napi_valuetype cbType = napi_undefined;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 4) napi_typeof(env, argv[3], &cbType);
  if (argc < 4 || cbType != napi_function || !chunk_args(env, argv, &in, &inLen, &chunk, &out)) {
    napi_throw_type_error(env, NULL, "sha256ChunksAsync(input, chunk > 0, out of 32 bytes per chunk, callback)");
    return NULL;
  }
  /* input and out stay alive (and in place) while the pool thread uses them */
  if (napi_create_array_with_length(env, 2, &hold) != napi_ok || napi_set_element(env, hold, 0, argv[0]) != napi_ok ||
      napi_set_element(env, hold, 1, argv[2]) != napi_ok) {
    napi_throw_error(env, NULL, "ferry native: cannot hold the buffers");
    return NULL;
  }
  ChunksJob *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  job->in = in;
  job->inLen = inLen;
  job->out = out;
  job->chunk = (size_t)chunk;
  queue_job(env, "ferry:sha256Chunks", &job->base, chunks_execute, argv[3], hold);
  return NULL;
}

/*
 * readFiles(reqs, paths, out, replies, callback): small files read whole on
 * a thread of libuv's pool, each one checked to be the file the walk listed
 * and its chunks hashed, where two reader threads (each a Node isolate of
 * about 10 MiB, fed by messages) did it before (source/reader.ts).
 *   reqs: 8 int64 per file: path offset in `paths` (NUL-terminated there),
 *     bytes to read, dev, ino, modification time's seconds, chunk size to
 *     hash in (0: none), offset in `out` of its data (its chunk hashes
 *     follow the data), modification time's nanoseconds (-1: no time; the
 *     two apart, as a time past 2262 does not fit 64-bit nanoseconds);
 *     copied at the call with the paths: what the pool thread follows is what was checked;
 *   replies: 4 doubles per file: status (0 read; > 0 the errno; -1 not a
 *     regular file now, its st_mode in the third; -2 another file now; -3
 *     a symlink now), bytes read, size at open, written since (1) / the
 *     call that failed (1 open, 2 fstat, 3 read).
 * The callback gets null, or an errno when the work could not run at all.
 */
enum { READ_REQ = 8, READ_REPLY = 4 };

typedef struct {
  PoolJob base;
  int64_t *reqs; /* the job's own copy */
  size_t count;
  const char *paths;
  size_t pathsLen;
  uint8_t *out;
  size_t outLen;
  double *replies;
} ReadJob;

static void read_one(const int64_t *q, const char *path, uint8_t *data, double *r) {
  int64_t length = q[1], chunk = q[5];
  int fd = open(path, O_RDONLY | O_NOATIME | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  /* O_NOATIME is refused on other users' files unless root */
  if (fd < 0 && errno == EPERM) fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    r[0] = errno == ELOOP ? -3 : errno;
    r[3] = 1;
    return;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    r[0] = errno;
    r[3] = 2;
  } else if (!S_ISREG(st.st_mode)) {
    r[0] = -1;
    r[2] = st.st_mode;
  } else if ((int64_t)st.st_dev != q[2] || (int64_t)st.st_ino != q[3]) {
    r[0] = -2;
  } else {
    r[2] = (double)st.st_size;
    r[3] = q[7] >= 0 && ((int64_t)st.st_mtim.tv_sec != q[4] || (int64_t)st.st_mtim.tv_nsec != q[7] || st.st_size > length) ? 1 : 0;
    int64_t got = 0;
    while (got < length) {
      ssize_t n = pread(fd, data + got, (size_t)(length - got), got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        r[0] = errno;
        r[3] = 3;
        break;
      }
      if (n == 0) break;
      got += n;
    }
    if (r[0] == 0) {
      r[1] = (double)got;
      if (chunk > 0 && !digest_chunks(data, (size_t)got, (size_t)chunk, data + length)) {
        r[0] = EIO;
        r[3] = 3;
      }
    }
  }
  close(fd);
}

/* The bytes a request takes in `out`: its data, its chunk sums, 8-byte aligned (room() in source/reader.ts). */
static uint64_t read_room(const int64_t *q) {
  uint64_t hashes = q[5] > 0 ? ((uint64_t)q[1] + (uint64_t)q[5] - 1) / (uint64_t)q[5] * 32 : 0;
  return ((uint64_t)q[1] + hashes + 7) & ~(uint64_t)7;
}

static void read_execute(PoolJob *j) {
  ReadJob *job = (ReadJob *)j;
  for (size_t i = 0; i < job->count; i++) {
    const int64_t *q = job->reqs + i * READ_REQ;
    double *r = job->replies + i * READ_REPLY;
    uint8_t *data = job->out + q[6];
    r[0] = r[1] = r[2] = r[3] = 0;
    read_one(q, job->paths + q[0], data, r);
    /* `out` comes uninitialised (zeroing it cost the main thread its page
       faults): what was not written is zeroed here, so no stale byte of the
       process sits beside a file's data */
    uint64_t got = r[0] == 0 ? (uint64_t)r[1] : 0;
    uint64_t sums = r[0] == 0 && q[5] > 0 ? (got + (uint64_t)q[5] - 1) / (uint64_t)q[5] * 32 : 0;
    memset(data + got, 0, (size_t)((uint64_t)q[1] - got));
    memset(data + q[1] + sums, 0, (size_t)(read_room(q) - (uint64_t)q[1] - sums));
  }
}

static void read_release(PoolJob *j) {
  free(((ReadJob *)j)->reqs);
  free((char *)((ReadJob *)j)->paths);
}

static napi_value read_files(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], hold;
  napi_valuetype cbType = napi_undefined;
  uint8_t *reqs, *paths, *out, *replies;
  size_t reqsLen, pathsLen, outLen, repliesLen;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 5) napi_typeof(env, argv[4], &cbType);
  bool ok = argc >= 5 && cbType == napi_function && bytes_of(env, argv[0], &reqs, &reqsLen) && bytes_of(env, argv[1], &paths, &pathsLen) &&
            bytes_of(env, argv[2], &out, &outLen) && bytes_of(env, argv[3], &replies, &repliesLen) && reqsLen % (READ_REQ * 8) == 0 &&
            (uintptr_t)reqs % 8 == 0 && (uintptr_t)replies % 8 == 0 && repliesLen == reqsLen / (READ_REQ * 8) * READ_REPLY * 8 &&
            pathsLen > 0 && paths[pathsLen - 1] == 0;
  /* the requests copied, then checked: the caller's memory may change after the call */
  size_t count = ok ? reqsLen / (READ_REQ * 8) : 0;
  int64_t *copy = ok && count ? malloc(reqsLen) : NULL;
  if (ok && count && !copy) {
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  if (copy) memcpy(copy, reqs, reqsLen);
  /* the paths too: `out` may be the caller's memory beside them */
  char *pathsCopy = ok ? malloc(pathsLen) : NULL;
  if (ok && !pathsCopy) {
    free(copy);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  if (pathsCopy) memcpy(pathsCopy, paths, pathsLen);
  /* every request inside its buffers, before a pool thread follows it */
  for (size_t i = 0; ok && i < count; i++) {
    const int64_t *q = copy + i * READ_REQ;
    /* (lengths under 2^48: no sum below overflows) */
    ok = q[0] >= 0 && (size_t)q[0] < pathsLen && q[1] >= 0 && q[1] < ((int64_t)1 << 48) && q[5] >= 0 && q[6] >= 0 && (uint64_t)q[6] <= outLen &&
         read_room(q) <= outLen - (uint64_t)q[6] && q[7] >= -1 && q[7] < 1000000000;
  }
  if (!ok) {
    free(copy);
    free(pathsCopy);
    napi_throw_type_error(env, NULL, "readFiles(reqs, paths NUL-terminated, out, replies, callback): requests out of their buffers");
    return NULL;
  }
  ReadJob *job = calloc(1, sizeof *job);
  if (!job || napi_create_array_with_length(env, 4, &hold) != napi_ok) {
    free(job);
    free(copy);
    free(pathsCopy);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  for (uint32_t k = 0; k < 4; k++) napi_set_element(env, hold, k, argv[k]);
  job->reqs = copy;
  job->count = count;
  job->base.release = read_release;
  job->paths = pathsCopy;
  job->pathsLen = pathsLen;
  job->out = out;
  job->outLen = outLen;
  job->replies = (double *)replies;
  /* the buffers are held until the callback: the pool thread reads and writes them */
  queue_job(env, "ferry:readFiles", &job->base, read_execute, argv[4], hold);
  return NULL;
}

/* ---- sealed objects on libuv's pool (format/seal/pool.ts) ----
 *
 * sealObject(key, name, plain, level, out, digest, wipePlain, callback) and
 * openObject(key, name, sealed, codec, out, digest, callback): a whole
 * sealed object (docs/seal-format.md) made or opened on a thread of libuv's
 * pool, where two seal worker threads (each a Node isolate with its own
 * heap and malloc arena, fed by messages) did it before. zstd is the
 * system's libzstd (dlopen), AES-256-GCM and SHA-256 the OpenSSL inside
 * Node; without either the calls are absent and the workers stay.
 *   sealObject: level 0 stores the body raw; otherwise zstd at that level,
 *     with the writer's rules: plaintexts of 256 KiB or more are sampled
 *     first (four 16 KiB pieces at level 1; above 97 % of their size
 *     together: raw), and a body that does not shrink is stored raw. `out`
 *     (at least plain + 44 bytes) receives the object; the callback gets
 *     null and the object's length. `digest` (32 bytes, or null): the
 *     SHA-256 of the object. `wipePlain`: the plaintext is zeroed after
 *     (a block buffer its caller takes again).
 *   openObject: `sealed` is an object whose header the caller has checked;
 *     codec 0 or 1 (its header's); `out` (the header's length, exactly)
 *     receives the plaintext, or null: only the tag is checked (an import).
 *     The callback gets null and 0 (authentic, and it decompressed to
 *     exactly `out`), -1 (the tag does not match: out zeroed) or a string
 *     saying why an authentic body does not decompress.
 * Every buffer is the pool thread's until the callback.
 */
static struct {
  void *(*cctx_new)(void);
  void *(*dctx_new)(void);
  size_t (*compress)(void *, void *, size_t, const void *, size_t, int);
  size_t (*decompress)(void *, void *, size_t, const void *, size_t);
  unsigned (*is_error)(size_t);
  const char *(*error_name)(size_t);
  size_t (*bound)(size_t);
} zstd;
static bool zstdLoaded = false;
static pthread_once_t zstdOnce = PTHREAD_ONCE_INIT;

static void load_zstd(void) {
  void *h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return;
#define SYM(field, name) zstd.field = (__typeof__(zstd.field))dlsym(h, name)
  SYM(cctx_new, "ZSTD_createCCtx");
  SYM(dctx_new, "ZSTD_createDCtx");
  SYM(compress, "ZSTD_compressCCtx");
  SYM(decompress, "ZSTD_decompressDCtx");
  SYM(is_error, "ZSTD_isError");
  SYM(error_name, "ZSTD_getErrorName");
  SYM(bound, "ZSTD_compressBound");
#undef SYM
  zstdLoaded = zstd.cctx_new && zstd.dctx_new && zstd.compress && zstd.decompress && zstd.is_error && zstd.error_name && zstd.bound;
}

enum { SEAL_HEADER = 28, SEAL_TAG = 16, PROBE_MIN = 256 * 1024, PROBE_SIZE = 16 * 1024, PROBE_COUNT = 4, PROBE_OUT = PROBE_SIZE + 1024 };
/* a context's scratch (a compressed body being opened) is kept up to this; larger ones are let go after use */
#define SCRATCH_KEEP ((size_t)4 << 20)

/* zstd contexts and scratch memory, one per job running, kept for the next */
typedef struct SealCtx SealCtx;
struct SealCtx {
  SealCtx *next;
  void *cctx, *dctx;
  uint8_t *scratch;
  size_t cap;
  uint8_t probe[PROBE_OUT];
};
static SealCtx *idleCtx = NULL;
static pthread_mutex_t ctxLock = PTHREAD_MUTEX_INITIALIZER;

static SealCtx *ctx_take(void) {
  pthread_mutex_lock(&ctxLock);
  SealCtx *c = idleCtx;
  if (c) idleCtx = c->next;
  pthread_mutex_unlock(&ctxLock);
  if (!c) c = calloc(1, sizeof *c);
  return c;
}

static void ctx_give(SealCtx *c) {
  if (c->cap > SCRATCH_KEEP) {
    free(c->scratch);
    c->scratch = NULL;
    c->cap = 0;
  }
  pthread_mutex_lock(&ctxLock);
  c->next = idleCtx;
  idleCtx = c;
  pthread_mutex_unlock(&ctxLock);
}

static uint8_t *ctx_scratch(SealCtx *c, size_t n) {
  if (!c->scratch || c->cap < n) {
    free(c->scratch);
    c->cap = 0;
    c->scratch = malloc(n ? n : 1);
    if (!c->scratch) return NULL;
    c->cap = n;
  }
  return c->scratch;
}

typedef struct {
  PoolJob base;
  bool seal;
  uint8_t key[32];
  uint8_t *aad; /* seal: the header's 28 bytes are filled in at execute; then the name (the job's own copy) */
  size_t aadLen;
  const uint8_t *in;
  size_t inLen;
  uint8_t *out;
  size_t outLen;
  bool plain; /* open: the plaintext is wanted in out (else only the tag is checked) */
  int level, codec;
  bool wipePlain; /* seal: zero the plaintext once sealed (a block buffer the caller takes again) */
  uint8_t *digest;
  size_t sealedLen;
  int status; /* open: 0 good, -1 not authentic, 1 does not decompress (why) */
  char why[160];
} SealJob;

/* Whether 4 samples of `in` shrink by less than 3 % at level 1 (the writer's rule: docs/seal-format.md). */
static bool seal_incompressible(SealCtx *c, const uint8_t *in, size_t len) {
  size_t step = (len - PROBE_SIZE) / (PROBE_COUNT - 1), packed = 0;
  for (int i = 0; i < PROBE_COUNT; i++) {
    size_t n = zstd.compress(c->cctx, c->probe, sizeof c->probe, in + (size_t)i * step, PROBE_SIZE, 1);
    if (zstd.is_error(n)) return true;
    packed += n;
  }
  return packed * 100 > (size_t)PROBE_COUNT * PROBE_SIZE * 97;
}

static void seal_execute(PoolJob *j) {
  SealJob *job = (SealJob *)j;
  SealCtx *c = ctx_take();
  if (!c) {
    j->err = ENOMEM;
    return;
  }
  uint8_t *h = job->out;
  size_t body = job->inLen;
  int codec = 0;
  if (job->level > 0 && job->inLen > 0) {
    if (!c->cctx) c->cctx = zstd.cctx_new();
    if (!c->cctx) {
      ctx_give(c);
      j->err = ENOMEM;
      return;
    }
    if (job->inLen < PROBE_MIN || !seal_incompressible(c, job->in, job->inLen)) {
      /* straight into the object; only a body strictly smaller than the plaintext is kept */
      size_t n = zstd.compress(c->cctx, h + SEAL_HEADER, job->inLen - 1, job->in, job->inLen, job->level);
      if (!zstd.is_error(n)) {
        body = n;
        codec = 1;
      }
    }
  }
  ctx_give(c);
  memcpy(h, "FERRY", 5);
  h[5] = 1; /* version */
  h[6] = (uint8_t)codec;
  h[7] = 0; /* flags */
  for (int i = 0; i < 8; i++) h[8 + i] = (uint8_t)((uint64_t)job->inLen >> (56 - 8 * i));
  for (size_t got = 0; got < 12;) {
    ssize_t n = getrandom(h + 16 + got, 12 - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      j->err = errno;
      return;
    }
    got += (size_t)n;
  }
  memcpy(job->aad, h, SEAL_HEADER);
  /* the raw body is encrypted from the plaintext; a compressed one in place */
  const uint8_t *src = codec ? h + SEAL_HEADER : job->in;
  if (gcm_run(true, job->key, h + 16, job->aad, job->aadLen, src, body, h + SEAL_HEADER, h + SEAL_HEADER + body) != 1) {
    j->err = EIO;
    return;
  }
  job->sealedLen = SEAL_HEADER + body + SEAL_TAG;
  if (job->wipePlain && job->inLen) memset((uint8_t *)job->in, 0, job->inLen); /* (an empty buffer's pointer may be NULL) */
  unsigned int mdLen = 0;
  if (job->digest && (!ossl.digest(h, job->sealedLen, job->digest, &mdLen, ossl.sha256(), NULL) || mdLen != 32)) j->err = EIO;
}

static void open_execute(PoolJob *j) {
  SealJob *job = (SealJob *)j;
  const uint8_t *in = job->in;
  size_t body = job->inLen - SEAL_HEADER - SEAL_TAG;
  memcpy(job->aad, in, SEAL_HEADER);
  SealCtx *c = NULL;
  uint8_t *plain = job->out; /* a raw body decrypts straight into out */
  if (!job->plain || job->codec == 1) {
    c = ctx_take();
    plain = c ? ctx_scratch(c, body) : NULL;
    if (!plain) {
      if (c) ctx_give(c);
      j->err = ENOMEM;
      return;
    }
  }
  int r = gcm_run(false, job->key, in + 16, job->aad, job->aadLen, in + SEAL_HEADER, body, plain, (uint8_t *)in + SEAL_HEADER + body);
  if (r < 0) j->err = EIO;
  else if (r == 0) {
    job->status = -1;
    if (job->plain && job->outLen) memset(job->out, 0, job->outLen);
  } else if (job->plain && job->codec == 1) {
    if (!c->dctx) c->dctx = zstd.dctx_new();
    if (!c->dctx) j->err = ENOMEM;
    else {
      /* exactly the announced size: zstd refuses to write past it */
      size_t n = zstd.decompress(c->dctx, job->out, job->outLen, plain, body);
      if (zstd.is_error(n) || n != job->outLen) {
        job->status = 1;
        if (zstd.is_error(n)) snprintf(job->why, sizeof job->why, "%s", zstd.error_name(n));
        else snprintf(job->why, sizeof job->why, "%zu bytes, header says %zu", n, job->outLen);
      }
    }
  }
  if (c) {
    memset(plain, 0, body); /* (the scratch holds nothing of an object between jobs) */
    ctx_give(c);
  }
  unsigned int mdLen = 0;
  if (!j->err && job->digest && (!ossl.digest(in, job->inLen, job->digest, &mdLen, ossl.sha256(), NULL) || mdLen != 32)) j->err = EIO;
}

static napi_value seal_result(napi_env env, PoolJob *j) {
  SealJob *job = (SealJob *)j;
  napi_value v = NULL;
  if (job->seal) napi_create_int64(env, (int64_t)job->sealedLen, &v);
  else if (job->status == 1) napi_create_string_utf8(env, job->why, NAPI_AUTO_LENGTH, &v);
  else napi_create_int32(env, job->status, &v);
  return v;
}

static void seal_release(PoolJob *j) {
  SealJob *job = (SealJob *)j;
  wipe(job->key, sizeof job->key);
  free(job->aad);
}

/* The common arguments of sealObject and openObject, checked; the job queued, or NULL after throwing. */
static napi_value queue_seal_job(napi_env env, napi_callback_info info, bool seal) {
  size_t want = seal ? 8 : 7, argc = 8;
  napi_value argv[8], hold;
  napi_valuetype cbType = napi_undefined, outType = napi_undefined, digestType = napi_undefined;
  uint8_t *key, *name, *in, *out = NULL, *digest = NULL;
  size_t keyLen, nameLen, inLen, outLen = 0, digestLen = 0;
  int32_t mode = 0; /* seal: level; open: codec */
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool wipePlain = false;
  if (argc >= want) {
    napi_typeof(env, argv[want - 1], &cbType);
    napi_typeof(env, argv[4], &outType);
    napi_typeof(env, argv[5], &digestType);
  }
  const char *usage = seal ? "sealObject(key of 32 bytes, name, plain, level 0..22, out of plain + 44 bytes, digest of 32 bytes or null, wipePlain, callback)"
                           : "openObject(key of 32 bytes, name, sealed of 44 bytes or more, codec 0 or 1, out or null, digest of 32 bytes or null, callback)";
  bool ok = argc >= want && cbType == napi_function && bytes_of(env, argv[0], &key, &keyLen) && keyLen == 32 && bytes_of(env, argv[1], &name, &nameLen) &&
            nameLen > 0 && nameLen <= INT_MAX - SEAL_HEADER /* (gcm_run's AAD limit; the workers have none below it) */ && bytes_of(env, argv[2], &in, &inLen) && napi_get_value_int32(env, argv[3], &mode) == napi_ok &&
            (digestType == napi_null || (bytes_of(env, argv[5], &digest, &digestLen) && digestLen == 32));
  if (ok && seal) ok = napi_get_value_bool(env, argv[6], &wipePlain) == napi_ok && mode >= 0 && mode <= 22 && bytes_of(env, argv[4], &out, &outLen) && outLen >= inLen && outLen - inLen >= SEAL_HEADER + SEAL_TAG;
  if (ok && !seal) {
    ok = (mode == 0 || mode == 1) && inLen >= SEAL_HEADER + SEAL_TAG && (outType == napi_null || bytes_of(env, argv[4], &out, &outLen));
    /* a raw body is the plaintext itself: the header said its length */
    if (ok && outType != napi_null && mode == 0) ok = outLen == inLen - SEAL_HEADER - SEAL_TAG;
  }
  if (!ok) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  SealJob *job = calloc(1, sizeof *job);
  uint8_t *aad = job ? malloc(SEAL_HEADER + nameLen) : NULL;
  if (!aad || napi_create_array_with_length(env, 4, &hold) != napi_ok) {
    free(job);
    free(aad);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  napi_set_element(env, hold, 0, argv[2]);
  if (outType != napi_null) napi_set_element(env, hold, 1, argv[4]);
  if (digest) napi_set_element(env, hold, 2, argv[5]);
  memcpy(job->key, key, 32);
  memcpy(aad + SEAL_HEADER, name, nameLen);
  job->seal = seal;
  job->aad = aad;
  job->aadLen = SEAL_HEADER + nameLen;
  job->in = in;
  job->inLen = inLen;
  job->out = out;
  job->outLen = outLen;
  job->plain = !seal && outType != napi_null;
  if (seal) job->level = mode;
  else job->codec = mode;
  job->digest = digest;
  job->base.result = seal_result;
  job->base.release = seal_release;
  job->wipePlain = wipePlain;
  queue_job(env, seal ? "ferry:sealObject" : "ferry:openObject", &job->base, seal ? seal_execute : open_execute, argv[want - 1], hold);
  return NULL;
}

static napi_value seal_object(napi_env env, napi_callback_info info) {
  return queue_seal_job(env, info, true);
}

static napi_value open_object(napi_env env, napi_callback_info info) {
  return queue_seal_job(env, info, false);
}

/* ---- one file written whole and put in place ----
 *
 * putFile(tmp, final, data, callback): creates `tmp` (O_EXCL, mode 0666
 * less the umask), writes all of `data`, starts its write-back
 * (sync_file_range, as startWriteback), closes it and renames it to
 * `final`, on a thread of libuv's pool: one trip through the event loop
 * where fs.promises took five (a seed disk's objects are written one after
 * another, and each trip waited for a busy main thread). Paths are
 * NUL-terminated bytes. The callback gets null, or the errno (tmp is
 * removed then); durability still comes from a later fsync.
 */
typedef struct {
  PoolJob base;
  char *tmp, *final;
  const uint8_t *data;
  size_t length;
} PutJob;

static void put_execute(PoolJob *j) {
  PutJob *job = (PutJob *)j;
  int fd = open(job->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    j->err = errno;
    return;
  }
  for (size_t done = 0; done < job->length;) {
    ssize_t n = write(fd, job->data + done, job->length - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      j->err = errno;
      break;
    }
    done += (size_t)n;
  }
#ifdef __linux__
  if (!j->err && job->length > 0) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* a hint: its failure changes nothing */
#endif
  if (close(fd) != 0 && !j->err && errno != EINTR) j->err = errno;
  if (!j->err && rename(job->tmp, job->final) != 0) j->err = errno;
  if (j->err) unlink(job->tmp);
}

static void put_release(PoolJob *j) {
  PutJob *job = (PutJob *)j;
  free(job->tmp);
  free(job->final);
}

static char *path_copy(napi_env env, napi_value v) {
  uint8_t *p;
  size_t n;
  if (!bytes_of(env, v, &p, &n) || n < 2 || p[n - 1] != 0 || memchr(p, 0, n - 1) != NULL) return NULL;
  char *c = malloc(n);
  if (c) memcpy(c, p, n);
  return c;
}

static napi_value put_file(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_valuetype cbType = napi_undefined;
  uint8_t *data;
  size_t length;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 4) napi_typeof(env, argv[3], &cbType);
  char *tmp = argc >= 4 ? path_copy(env, argv[0]) : NULL, *final = argc >= 4 ? path_copy(env, argv[1]) : NULL;
  if (!tmp || !final || cbType != napi_function || !bytes_of(env, argv[2], &data, &length)) {
    free(tmp);
    free(final);
    napi_throw_type_error(env, NULL, "putFile(tmp, final: NUL-terminated paths, data, callback)");
    return NULL;
  }
  PutJob *job = calloc(1, sizeof *job);
  if (!job) {
    free(tmp);
    free(final);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  job->tmp = tmp;
  job->final = final;
  job->data = data;
  job->length = length;
  job->base.release = put_release;
  /* the data is held until the callback: the pool thread reads it */
  queue_job(env, "ferry:putFile", &job->base, put_execute, argv[3], argv[2]);
  return NULL;
}

/* alignOf(buffer): where the buffer's first byte sits modulo 4096, so that
 * a caller can take a page-aligned view of it for O_DIRECT. */
static napi_value align_of(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], r;
  uint8_t *p;
  size_t n;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !bytes_of(env, argv[0], &p, &n)) {
    napi_throw_type_error(env, NULL, "alignOf(buffer)");
    return NULL;
  }
  napi_create_int32(env, (int32_t)((uintptr_t)p % 4096), &r);
  return r;
}

/* ---- the restore's file writer: a thread of its own, without JavaScript ----
 *
 * startWriter(killAfter, onResults) starts a thread that creates restored
 * files from batches of jobs, in the order given: open (O_EXCL), write (the
 * zero pages of a sparse file skipped), start the write-back, then for the
 * last part of a file its length, owner, mode, xattrs (through the
 * descriptor), times to the nanosecond, close and rename into place. Before
 * writing, each job's data is checked against its stored chunk sums. It is
 * what restore/writer.ts's worker thread does with Node's synchronous calls,
 * without a second JavaScript heap (20-30 MiB of a restore's peak) and
 * without copying every job through a message.
 *
 * writerSubmit(writer, id, jobs) queues a batch; onResults(id, results) is
 * called on the main thread once it is done, with per job [status, errno,
 * syscall, atDst, badOffset, warnings...] (status 0 done, 1 failed with
 * errno in syscall, 2 aborted, 3 an earlier part failed, 4 skipped).
 * writerStop(writer, halt) ends the thread once its queue is empty, or
 * with `halt` after the job in hand (a Ctrl-C: the exit handlers then
 * remove the restore's temporaries, and nothing may be writing into them). A job is the
 * array [tmp, dst, flags, size, uid, gid, mode, key, times, chunkSize, chunks,
 * checkBase, checkSize, offsets, datas, xattrNames, xattrValues] that
 * FileWriter builds (restore/writer.ts); its buffers stay the writer's
 * until the batch is reported.
 */
enum {
  WF_FRESH = 1, WF_DIRECT = 2, WF_SPARSE = 4, WF_ABORT = 8, WF_OWNER = 16, WF_PART = 32, WF_FIRST = 64, WF_LAST = 128,
  WF_CHECK = 256, WF_TIMES = 512, WF_SKIP = 1024,
};
enum { WS_DONE = 0, WS_FAILED = 1, WS_ABORTED = 2, WS_NO_PART = 3, WS_SKIPPED = 4 };
enum { WW_OWNER = 1, WW_MODE = 2, WW_XATTR = 3, WW_TIMES = 4 };
#define W_MAX_WARN 8
#define W_PAGE 4096
#define W_WRITEBACK_MIN (1024 * 1024)

typedef struct {
  int64_t offset;
  const uint8_t *data;
  size_t len;
} WPiece;

typedef struct {
  char *name;
  const uint8_t *value;
  size_t len;
} WXattr;

typedef struct {
  char *tmp, *dst;
  uint32_t flags;
  int64_t size, uid, gid, key;
  uint32_t mode;
  struct timespec ts[2];
  int64_t chunkSize, checkBase, checkSize;
  const uint8_t *chunks;
  size_t chunksLen;
  WPiece *pieces;
  size_t npieces;
  WXattr *xattrs;
  size_t nxattrs;
  /* the outcome */
  int status, err;
  const char *syscall;
  bool atDst;
  int64_t badOffset;
  int nwarn;
  int warn[W_MAX_WARN][3]; /* kind, errno, xattr index */
} WJob;

typedef struct WBatch WBatch;
struct WBatch {
  WBatch *next;
  double id;
  WJob *jobs;
  size_t n;
  napi_ref hold;
};

typedef struct {
  int64_t key;
  int fd;
} WPart;

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  WBatch *head, *tail;
  bool stopping, running;
  volatile bool halt; /* stop after the job in hand (the process is being interrupted) */
  napi_threadsafe_function tsfn;
  unsigned outstanding; /* batches submitted and not yet reported (main thread only) */
  int64_t killAfter, written;
  uint8_t *scratch;
  int64_t scratchCap, zeroFor;
  uint8_t zeroSum[32];
  WPart *parts;
  size_t nparts, capParts;
} Writer;

static void wjob_free(WJob *j) {
  free(j->tmp);
  free(j->dst);
  free(j->pieces);
  for (size_t i = 0; i < j->nxattrs; i++) free(j->xattrs[i].name);
  free(j->xattrs);
}

static void wbatch_free(WBatch *b) {
  for (size_t i = 0; i < b->n; i++) wjob_free(&b->jobs[i]);
  free(b->jobs);
  free(b);
}

static int parts_find(Writer *w, int64_t key) {
  for (size_t i = 0; i < w->nparts; i++) if (w->parts[i].key == key) return (int)i;
  return -1;
}

/* The descriptor of a file written in parts, taken out of the table (-1: none). */
static int parts_take(Writer *w, int64_t key) {
  int i = parts_find(w, key);
  if (i < 0) return -1;
  int fd = w->parts[i].fd;
  w->parts[i] = w->parts[--w->nparts];
  return fd;
}

static bool parts_put(Writer *w, int64_t key, int fd) {
  if (w->nparts == w->capParts) {
    size_t cap = w->capParts ? w->capParts * 2 : 16;
    WPart *p = realloc(w->parts, cap * sizeof *p);
    if (!p) return false;
    w->parts = p;
    w->capParts = cap;
  }
  w->parts[w->nparts++] = (WPart){key, fd};
  return true;
}

/* The offset of the first chunk whose data does not match its stored sum, or -1 (restore/files.ts's checkChunks). */
static int64_t w_check(Writer *w, WJob *j) {
  int64_t cs = j->chunkSize, size = j->checkSize, base = j->checkBase;
  int64_t nChunks = (size + cs - 1) / cs;
  if (cs <= 0 || (int64_t)j->chunksLen != nChunks * 32) return base;
  if (w->scratchCap < cs) {
    free(w->scratch);
    w->scratch = malloc((size_t)cs);
    w->scratchCap = w->scratch ? cs : 0;
    w->zeroFor = 0;
    if (!w->scratch) return -1; /* (out of memory: left unchecked) */
  }
  size_t pi = 0;
  uint8_t sum[32];
  for (int64_t c = 0; c < nChunks; c++) {
    int64_t s0 = c * cs, e0 = s0 + cs < size ? s0 + cs : size;
    while (pi < j->npieces && j->pieces[pi].offset - base + (int64_t)j->pieces[pi].len <= s0) pi++;
    const WPiece *p = pi < j->npieces ? &j->pieces[pi] : NULL;
    int64_t rel = p ? p->offset - base : 0;
    bool ok;
    if (p && rel <= s0 && rel + (int64_t)p->len >= e0) {
      ok = digest_chunks(p->data + (s0 - rel), (size_t)(e0 - s0), (size_t)(e0 - s0), sum);
    } else if (!p || rel >= e0) {
      /* all hole: the sum of zeros (known once per chunk size) */
      if (e0 - s0 == cs && w->zeroFor == cs) {
        memcpy(sum, w->zeroSum, 32);
        ok = true;
      } else {
        memset(w->scratch, 0, (size_t)(e0 - s0));
        ok = digest_chunks(w->scratch, (size_t)(e0 - s0), (size_t)(e0 - s0), sum);
        if (ok && e0 - s0 == cs) {
          memcpy(w->zeroSum, sum, 32);
          w->zeroFor = cs;
        }
      }
    } else {
      /* across pieces, or partly a hole */
      memset(w->scratch, 0, (size_t)(e0 - s0));
      for (size_t k = pi; k < j->npieces && j->pieces[k].offset - base < e0; k++) {
        int64_t r = j->pieces[k].offset - base;
        int64_t s = r > s0 ? r : s0, t = r + (int64_t)j->pieces[k].len < e0 ? r + (int64_t)j->pieces[k].len : e0;
        if (t > s) memcpy(w->scratch + (s - s0), j->pieces[k].data + (s - r), (size_t)(t - s));
      }
      ok = digest_chunks(w->scratch, (size_t)(e0 - s0), (size_t)(e0 - s0), sum);
    }
    if (!ok) return -1;
    if (memcmp(sum, j->chunks + c * 32, 32) != 0) return base + s0;
  }
  return -1;
}

static bool w_zero_page(const uint8_t *p) {
  static const uint8_t zero[W_PAGE];
  return memcmp(p, zero, W_PAGE) == 0;
}

/* Writes all of `len` bytes at `pos`; 0 or the errno. */
static int w_pwrite(Writer *w, int fd, const uint8_t *data, size_t len, int64_t pos) {
  while (len > 0) {
    ssize_t n = pwrite(fd, data, len, pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += n;
    len -= (size_t)n;
    pos += n;
    if (w->killAfter >= 0 && (w->written += n) >= w->killAfter) kill(getpid(), SIGKILL); /* (a test's hook) */
  }
  return 0;
}

/* A piece's bytes; a sparse file's whole zero pages (counted from the file's start) are left as holes. */
static int w_write_piece(Writer *w, int fd, const WPiece *p, bool sparse) {
  if (!sparse) return w_pwrite(w, fd, p->data, p->len, p->offset);
  size_t i = 0, start = 0;
  bool inRun = false;
  while (i < p->len) {
    size_t end = (size_t)(((p->offset + (int64_t)i) / W_PAGE + 1) * W_PAGE - p->offset);
    if (end > p->len) end = p->len;
    bool zero = end - i == W_PAGE && w_zero_page(p->data + i);
    if (!zero && !inRun) {
      start = i;
      inRun = true;
    }
    if (zero && inRun) {
      int e = w_pwrite(w, fd, p->data + start, i - start, p->offset + (int64_t)start);
      if (e) return e;
      inRun = false;
    }
    i = end;
  }
  return inRun ? w_pwrite(w, fd, p->data + start, p->len - start, p->offset + (int64_t)start) : 0;
}

static void w_warn(WJob *j, int kind, int err, int index) {
  if (j->nwarn >= W_MAX_WARN) return;
  j->warn[j->nwarn][0] = kind;
  j->warn[j->nwarn][1] = err;
  j->warn[j->nwarn][2] = index;
  j->nwarn++;
}

static void w_fail(WJob *j, int err, const char *syscall, bool atDst) {
  j->status = WS_FAILED;
  j->err = err;
  j->syscall = syscall;
  j->atDst = atDst;
}

static void w_exec(Writer *w, WJob *j) {
  uint32_t f = j->flags;
  bool direct = f & WF_DIRECT, part = f & WF_PART;
  bool first = !part || (f & WF_FIRST), last = !part || (f & WF_LAST);
  const char *tmp = direct ? j->dst : j->tmp;
  j->badOffset = -1;
  if (f & WF_SKIP) {
    j->status = WS_SKIPPED;
    return;
  }
  if (f & WF_ABORT) {
    int fd = part ? parts_take(w, j->key) : -1;
    if (fd >= 0) {
      close(fd);
      unlink(tmp); /* direct: the file the first part created (O_EXCL) */
    }
    j->status = WS_ABORTED;
    return;
  }
  if (f & WF_CHECK) j->badOffset = w_check(w, j);
  int fd;
  if (first) {
    /* (a leftover in the way was cleared by the main thread; O_EXCL refuses anything put there since) */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      w_fail(j, errno, "open", direct);
      return;
    }
    if (part && !last && !parts_put(w, j->key, fd)) {
      close(fd);
      unlink(tmp);
      w_fail(j, ENOMEM, "open", direct);
      return;
    }
  } else {
    fd = parts_take(w, j->key);
    if (fd < 0) {
      j->status = WS_NO_PART;
      return;
    }
    if (!last) parts_put(w, j->key, fd); /* (its slot was just freed: cannot fail) */
  }
  int e = 0;
  const char *sc = "write";
  for (size_t i = 0; i < j->npieces && !e; i++) e = w_write_piece(w, fd, &j->pieces[i], f & WF_SPARSE);
#ifdef __linux__
  if (!e && j->npieces > 0 && (part || j->size >= W_WRITEBACK_MIN)) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* (a hint) */
#endif
  if (!e && last && (f & WF_SPARSE) && ftruncate(fd, j->size) != 0) {
    e = errno; /* the holes of a sparse file stay holes */
    sc = "ftruncate";
  }
  if (e) {
    if (part) parts_take(w, j->key);
    close(fd);
    unlink(tmp); /* direct: the file this job created (O_EXCL), never one it found */
    w_fail(j, e, sc, direct);
    return;
  }
  if (!last) return;
  if ((f & WF_OWNER) && fchown(fd, (uid_t)j->uid, (gid_t)j->gid) != 0) w_warn(j, WW_OWNER, errno, 0);
  if (fchmod(fd, j->mode) != 0) w_warn(j, WW_MODE, errno, 0); /* after chown, which clears setuid/setgid */
  /* after owner and mode (chown clears capabilities), through this descriptor */
  for (size_t i = 0; i < j->nxattrs; i++) {
    if (fsetxattr(fd, j->xattrs[i].name, j->xattrs[i].value, j->xattrs[i].len, 0) != 0) w_warn(j, WW_XATTR, errno, (int)i);
  }
  if ((f & WF_TIMES) && futimens(fd, j->ts) != 0) w_warn(j, WW_TIMES, errno, 0);
  if (close(fd) != 0) {
    e = errno;
    sc = "close";
  } else if (!direct && rename(tmp, j->dst) != 0) {
    e = errno;
    sc = "rename";
  }
  if (e) {
    unlink(tmp);
    w_fail(j, e, sc, false);
  }
}

static void *writer_main(void *arg) {
  Writer *w = arg;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    while (!w->head && !w->stopping) pthread_cond_wait(&w->cond, &w->lock);
    WBatch *b = w->head;
    if (b) {
      w->head = b->next;
      if (!w->head) w->tail = NULL;
    }
    pthread_mutex_unlock(&w->lock);
    if (!b || w->halt) break; /* (halted: what is left is dropped with the process) */
    for (size_t i = 0; i < b->n && !w->halt; i++) w_exec(w, &b->jobs[i]);
    if (w->halt) break;
    napi_call_threadsafe_function(w->tsfn, b, napi_tsfn_blocking);
  }
  return NULL;
}

/* On the main thread: a batch done, reported to onResults. */
static void writer_report(napi_env env, napi_value cb, void *context, void *data) {
  Writer *w = context;
  WBatch *b = data;
  if (env != NULL) {
    napi_value results, args[2], undef, ignored;
    bool ok = napi_create_array_with_length(env, b->n, &results) == napi_ok && napi_create_double(env, b->id, &args[0]) == napi_ok;
    for (size_t i = 0; ok && i < b->n; i++) {
      WJob *j = &b->jobs[i];
      napi_value r, v;
      ok = napi_create_array_with_length(env, 5 + 3 * (size_t)j->nwarn, &r) == napi_ok;
      int32_t ints[] = {j->status, j->err};
      for (int k = 0; ok && k < 2; k++) ok = napi_create_int32(env, ints[k], &v) == napi_ok && napi_set_element(env, r, (uint32_t)k, v) == napi_ok;
      if (ok) ok = (j->syscall ? napi_create_string_utf8(env, j->syscall, NAPI_AUTO_LENGTH, &v) : napi_get_null(env, &v)) == napi_ok && napi_set_element(env, r, 2, v) == napi_ok;
      if (ok) ok = napi_get_boolean(env, j->atDst, &v) == napi_ok && napi_set_element(env, r, 3, v) == napi_ok;
      if (ok) ok = napi_create_double(env, (double)j->badOffset, &v) == napi_ok && napi_set_element(env, r, 4, v) == napi_ok;
      for (int k = 0; ok && k < 3 * j->nwarn; k++) ok = napi_create_int32(env, j->warn[k / 3][k % 3], &v) == napi_ok && napi_set_element(env, r, (uint32_t)(5 + k), v) == napi_ok;
      if (ok) ok = napi_set_element(env, results, (uint32_t)i, r) == napi_ok;
    }
    if (b->hold) napi_delete_reference(env, b->hold);
    b->hold = NULL;
    if (--w->outstanding == 0) napi_unref_threadsafe_function(env, w->tsfn);
    args[1] = results;
    if (ok && napi_get_undefined(env, &undef) == napi_ok) napi_call_function(env, undef, cb, 2, args, &ignored);
  }
  wbatch_free(b);
}

static void writer_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Writer *w = data;
  /* (the thread was joined by writerStop; a writer never stopped keeps its thread until the process ends) */
  if (w->running) return;
  for (size_t i = 0; i < w->nparts; i++) close(w->parts[i].fd);
  free(w->parts);
  free(w->scratch);
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w);
}

static Writer *writer_of(napi_env env, napi_value v) {
  Writer *w = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, (void **)&w) != napi_ok) return NULL;
  return w;
}

static napi_value start_writer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name, handle;
  napi_valuetype cbType = napi_undefined;
  double killAfter = -1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 2) napi_typeof(env, argv[1], &cbType);
  if (argc < 2 || cbType != napi_function || napi_get_value_double(env, argv[0], &killAfter) != napi_ok) {
    napi_throw_type_error(env, NULL, "startWriter(killAfter bytes or -1, onResults)");
    return NULL;
  }
  Writer *w = calloc(1, sizeof *w);
  if (!w) {
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  w->killAfter = killAfter >= 0 ? (int64_t)killAfter : -1;
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  if (napi_create_string_utf8(env, "ferry:writer", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, w, writer_report, &w->tsfn) != napi_ok) {
    writer_finalize(env, w, NULL);
    napi_throw_error(env, NULL, "ferry native: cannot start the writer");
    return NULL;
  }
  napi_unref_threadsafe_function(env, w->tsfn); /* (held while batches are out: writerSubmit) */
  if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
    napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
    writer_finalize(env, w, NULL);
    napi_throw_error(env, NULL, "ferry native: cannot start the writer's thread");
    return NULL;
  }
  w->running = true;
  if (napi_create_external(env, w, writer_finalize, NULL, &handle) != napi_ok) return NULL;
  return handle;
}

/* A NUL-terminated copy of a path's bytes (NULL: not bytes, or no memory). */
static char *w_path(napi_env env, napi_value v) {
  uint8_t *p;
  size_t n;
  if (!bytes_of(env, v, &p, &n) || memchr(p, 0, n)) return NULL;
  char *s = malloc(n + 1);
  if (s) {
    memcpy(s, p, n);
    s[n] = 0;
  }
  return s;
}

static bool w_int(napi_env env, napi_value arr, uint32_t i, int64_t *out) {
  napi_value v;
  double d;
  if (napi_get_element(env, arr, i, &v) != napi_ok || napi_get_value_double(env, v, &d) != napi_ok) return false;
  *out = (int64_t)d;
  return true;
}

static bool w_parse(napi_env env, napi_value a, WJob *j) {
  napi_value v, offs, datas, names, values;
  int64_t flags, mode;
  if (napi_get_element(env, a, 0, &v) != napi_ok || !(j->tmp = w_path(env, v))) return false;
  if (napi_get_element(env, a, 1, &v) != napi_ok || !(j->dst = w_path(env, v))) return false;
  if (!w_int(env, a, 2, &flags) || !w_int(env, a, 3, &j->size) || !w_int(env, a, 4, &j->uid) || !w_int(env, a, 5, &j->gid) ||
      !w_int(env, a, 6, &mode) || !w_int(env, a, 7, &j->key) || !w_int(env, a, 9, &j->chunkSize) || !w_int(env, a, 11, &j->checkBase) ||
      !w_int(env, a, 12, &j->checkSize))
    return false;
  j->flags = (uint32_t)flags;
  j->mode = (uint32_t)mode;
  if (j->flags & WF_TIMES) {
    int64_t t[4];
    if (napi_get_element(env, a, 8, &v) != napi_ok) return false;
    for (uint32_t k = 0; k < 4; k++) if (!w_int(env, v, k, &t[k])) return false;
    j->ts[0] = (struct timespec){.tv_sec = (time_t)t[0], .tv_nsec = (long)t[1]};
    j->ts[1] = (struct timespec){.tv_sec = (time_t)t[2], .tv_nsec = (long)t[3]};
  }
  if (j->flags & WF_CHECK) {
    uint8_t *c;
    if (napi_get_element(env, a, 10, &v) != napi_ok || !bytes_of(env, v, &c, &j->chunksLen)) return false;
    j->chunks = c;
  }
  uint32_t n = 0, nx = 0;
  if (napi_get_element(env, a, 13, &offs) != napi_ok || napi_get_element(env, a, 14, &datas) != napi_ok || napi_get_array_length(env, datas, &n) != napi_ok) return false;
  j->pieces = n ? calloc(n, sizeof *j->pieces) : NULL;
  if (n && !j->pieces) return false;
  j->npieces = n;
  for (uint32_t k = 0; k < n; k++) {
    uint8_t *d;
    if (!w_int(env, offs, k, &j->pieces[k].offset) || napi_get_element(env, datas, k, &v) != napi_ok || !bytes_of(env, v, &d, &j->pieces[k].len)) return false;
    j->pieces[k].data = d;
  }
  if (napi_get_element(env, a, 15, &names) != napi_ok || napi_get_element(env, a, 16, &values) != napi_ok) return false;
  napi_valuetype t;
  if (napi_typeof(env, names, &t) != napi_ok) return false;
  if (t != napi_null && t != napi_undefined) {
    if (napi_get_array_length(env, names, &nx) != napi_ok) return false;
    j->xattrs = nx ? calloc(nx, sizeof *j->xattrs) : NULL;
    if (nx && !j->xattrs) return false;
    j->nxattrs = nx;
    for (uint32_t k = 0; k < nx; k++) {
      size_t len;
      uint8_t *val;
      if (napi_get_element(env, names, k, &v) != napi_ok || napi_get_value_string_latin1(env, v, NULL, 0, &len) != napi_ok) return false;
      if (!(j->xattrs[k].name = malloc(len + 1)) || napi_get_value_string_latin1(env, v, j->xattrs[k].name, len + 1, &len) != napi_ok) return false;
      if (napi_get_element(env, values, k, &v) != napi_ok || !bytes_of(env, v, &val, &j->xattrs[k].len)) return false;
      j->xattrs[k].value = val;
    }
  }
  return true;
}

static napi_value writer_submit(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  double id;
  uint32_t n = 0;
  bool isArray = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Writer *w = argc >= 3 ? writer_of(env, argv[0]) : NULL;
  if (!w || !w->running || napi_get_value_double(env, argv[1], &id) != napi_ok || napi_is_array(env, argv[2], &isArray) != napi_ok || !isArray ||
      napi_get_array_length(env, argv[2], &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "writerSubmit(a running writer, id, jobs)");
    return NULL;
  }
  WBatch *b = calloc(1, sizeof *b);
  WJob *jobs = b && n ? calloc(n, sizeof *jobs) : NULL;
  if (!b || (n && !jobs)) {
    free(b);
    napi_throw_error(env, NULL, "ferry native: out of memory");
    return NULL;
  }
  b->id = id;
  b->jobs = jobs;
  b->n = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value a;
    if (napi_get_element(env, argv[2], i, &a) != napi_ok || !w_parse(env, a, &jobs[i])) {
      wbatch_free(b);
      napi_throw_type_error(env, NULL, "writerSubmit: a job is not [tmp, dst, flags, size, uid, gid, mode, key, times, chunkSize, chunks, checkBase, checkSize, offsets, datas, xattrNames, xattrValues]");
      return NULL;
    }
  }
  /* the jobs' buffers stay alive (and ours) until the batch is reported */
  if (napi_create_reference(env, argv[2], 1, &b->hold) != napi_ok) {
    wbatch_free(b);
    napi_throw_error(env, NULL, "ferry native: cannot hold the jobs");
    return NULL;
  }
  if (w->outstanding++ == 0) napi_ref_threadsafe_function(env, w->tsfn);
  pthread_mutex_lock(&w->lock);
  if (w->tail) w->tail->next = b;
  else w->head = b;
  w->tail = b;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static napi_value writer_stop(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool halt = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Writer *w = argc >= 1 ? writer_of(env, argv[0]) : NULL;
  if (!w || (argc >= 2 && napi_get_value_bool(env, argv[1], &halt) != napi_ok)) {
    napi_throw_type_error(env, NULL, "writerStop(writer, halt)");
    return NULL;
  }
  if (!w->running) return NULL;
  pthread_mutex_lock(&w->lock);
  w->stopping = true;
  if (halt) w->halt = true;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  /* (the queue is empty, as FileWriter stops it after its last batch is reported; or halted: after the job in hand) */
  pthread_join(w->thread, NULL);
  w->running = false;
  napi_release_threadsafe_function(w->tsfn, napi_tsfn_release);
  for (size_t i = 0; i < w->nparts; i++) close(w->parts[i].fd);
  w->nparts = 0;
  return NULL;
}

/*
 * mallocTune(arenaMax, mmapThreshold): glibc's malloc set for a long
 * streaming run (the command line calls it first, before the threads that
 * would make arenas): at most `arenaMax` arenas, and buffers of
 * `mmapThreshold` bytes or more in mappings of their own, given back to the
 * kernel when freed (0 leaves a setting alone). By default glibc makes an
 * arena per thread that allocates (libuv's pool, V8's helpers) and raises
 * the threshold after the first large free, so a restore's 2 MiB blocks and
 * file pieces came out of the heaps and left them fragmented: 40-50 MiB of
 * a 200 MiB peak was free memory the process kept. Returns whether glibc
 * took both.
 */
static napi_value malloc_tune(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t arenaMax = 0, threshold = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || napi_get_value_int32(env, argv[0], &arenaMax) != napi_ok || napi_get_value_int32(env, argv[1], &threshold) != napi_ok || arenaMax < 0 || threshold < 0) {
    napi_throw_type_error(env, NULL, "mallocTune(arenaMax >= 0, mmapThreshold >= 0)");
    return NULL;
  }
  bool ok = true;
#ifdef __GLIBC__
  if (arenaMax > 0) ok = mallopt(M_ARENA_MAX, arenaMax) == 1 && ok;
  if (threshold > 0) ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1 && ok;
#else
  ok = false;
#endif
  napi_get_boolean(env, ok, &result);
  return result;
}

/* Exports `fn` as `name` when `present`. */
static void export_fn(napi_env env, napi_value exports, const char *name, napi_callback fn, bool present) {
  napi_value f;
  if (present && napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f) == napi_ok) napi_set_named_property(env, exports, name, f);
}

NAPI_MODULE_INIT() {
  pthread_once(&opensslOnce, load_openssl); /* (each worker thread loads this module too) */
  static const struct {
    const char *name;
    napi_callback fn;
  } always[] = {
      {"startWriteback", start_writeback}, {"startWritebackSync", start_writeback_sync}, {"scryptRomix", scrypt_romix},
      {"mapRange", map_range}, {"unmapRange", unmap_range}, {"errorsAsJson", errors_as_json}, {"prefetch", prefetch},
      /* (named anew when its arguments or reply change: an addon built from older sources lacks it, and its user falls back) */
      {"scanFolder", scan_dir}, {"putFile", put_file}, {"alignOf", align_of}, {"futimens", fd_utimens},
      {"mallocTune", malloc_tune},
  };
  for (size_t i = 0; i < sizeof always / sizeof always[0]; i++) export_fn(env, exports, always[i].name, always[i].fn, true);
  /* through the OpenSSL inside Node, when its symbols are found */
  export_fn(env, exports, "gcm", gcm, opensslLoaded);
  export_fn(env, exports, "sha256Chunks", sha256_chunks, ossl.digest && ossl.sha256);
  export_fn(env, exports, "sha256ChunksAsync", sha256_chunks_async, ossl.digest && ossl.sha256);
  export_fn(env, exports, "readFiles", read_files, ossl.digest && ossl.sha256);
  export_fn(env, exports, "startWriter", start_writer, ossl.digest && ossl.sha256);
  export_fn(env, exports, "writerSubmit", writer_submit, ossl.digest && ossl.sha256);
  export_fn(env, exports, "writerStop", writer_stop, ossl.digest && ossl.sha256);
  /* and the system's libzstd */
  pthread_once(&zstdOnce, load_zstd);
  export_fn(env, exports, "sealObject", seal_object, opensslLoaded && ossl.digest && ossl.sha256 && zstdLoaded);
  export_fn(env, exports, "openObject", open_object, opensslLoaded && ossl.digest && ossl.sha256 && zstdLoaded);
  return exports;
}
