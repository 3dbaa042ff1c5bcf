// ferry's few Linux system calls that Node does not offer.
//
// startWriteback(fd, offset, length, callback): sync_file_range(fd, offset,
// length, SYNC_FILE_RANGE_WRITE) on a thread of libuv's pool (length 0: to the
// end of the file); the callback gets null, or the errno when it failed.
// It asks the kernel to begin writing those dirty pages now, without waiting
// for them and without committing the journal (git's core.fsyncMethod=batch
// does the same): files written this way and fsynced at the end find most of
// their data already on the disk, and the disk writes while ferry computes.
// It is a hint; durability still comes from fsync.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <node_api.h>

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd;
  int64_t offset;
  int64_t length;
  int err;
} Job;

static void run(napi_env env, void *data) {
  (void)env;
  Job *job = data;
  job->err = 0;
#ifdef __linux__
  if (sync_file_range(job->fd, job->offset, job->length, SYNC_FILE_RANGE_WRITE) != 0) job->err = errno;
#else
  job->err = ENOSYS;
#endif
}

static void done(napi_env env, napi_status status, void *data) {
  Job *job = data;
  napi_value cb, undef, arg, ignored;
  if (status != napi_ok) job->err = ECANCELED;
  if (napi_get_reference_value(env, job->callback, &cb) == napi_ok && cb != NULL && napi_get_undefined(env, &undef) == napi_ok &&
      (job->err ? napi_create_int32(env, job->err, &arg) : napi_get_null(env, &arg)) == napi_ok) {
    napi_call_function(env, undef, cb, 1, &arg, &ignored);
  }
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value start_writeback(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], name;
  napi_valuetype cbType = napi_undefined;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc == 4) napi_typeof(env, argv[3], &cbType);
  int32_t fd;
  int64_t offset, length;
  if (argc < 4 || cbType != napi_function || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok || napi_get_value_int64(env, argv[2], &length) != napi_ok ||
      fd < 0 || offset < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "startWriteback(fd, offset, length, callback)");
    return NULL;
  }
  Job *job = calloc(1, sizeof *job);
  if (!job) {
    napi_throw_error(env, NULL, "startWriteback: out of memory");
    return NULL;
  }
  job->fd = fd;
  job->offset = offset;
  job->length = length;
  if (napi_create_reference(env, argv[3], 1, &job->callback) != napi_ok) {
    free(job);
    napi_throw_error(env, NULL, "startWriteback: cannot hold the callback");
    return NULL;
  }
  if (napi_create_string_utf8(env, "ferry:startWriteback", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, run, done, job, &job->work) != napi_ok) {
    napi_delete_reference(env, job->callback);
    free(job);
    napi_throw_error(env, NULL, "startWriteback: cannot queue the work");
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    napi_delete_reference(env, job->callback);
    free(job);
    napi_throw_error(env, NULL, "startWriteback: cannot queue the work");
    return NULL;
  }
  return NULL;
}

// startWritebackSync(fd, offset, length): the same, on the calling thread
// (a worker thread that writes with synchronous calls); returns 0 or the errno.
static napi_value start_writeback_sync(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  int64_t offset, length;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int64(env, argv[2], &length) != napi_ok || fd < 0 || offset < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "startWritebackSync(fd, offset, length)");
    return NULL;
  }
  int err = 0;
#ifdef __linux__
  if (sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0) err = errno;
#else
  err = ENOSYS;
#endif
  napi_create_int32(env, err, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "startWriteback", NAPI_AUTO_LENGTH, start_writeback, NULL, &fn);
  napi_set_named_property(env, exports, "startWriteback", fn);
  napi_create_function(env, "startWritebackSync", NAPI_AUTO_LENGTH, start_writeback_sync, NULL, &fn);
  napi_set_named_property(env, exports, "startWritebackSync", fn);
  return exports;
}
