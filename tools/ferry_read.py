#!/usr/bin/python3
"""ferry_read.py - an independent reader of ferry vaults (format version 1).

Written from the documents alone, not from ferry's code: docs/vault-format.md
(object names, the directory vault, items and point manifests),
docs/seal-format.md (sealed objects, vault.json and its check, key slots),
docs/seed-format.md (stored disks: head and blocks), docs/volume-format.md
(the files volume: superblock, catalog, extents, chunk sums) and README.md,
plus the VHD 1.0 specification.  It proves that they are enough to read a
vault without ferry: test/independent-reader.test.ts compares what it reads
with what ferry itself restores and exports.  Python 3.11 stdlib +
`cryptography` (AES-GCM) + `zstandard` (Debian: python3-cryptography
python3-zstandard), run by /usr/bin/python3.

The passphrase comes from the environment variable FERRY_PASSPHRASE.

Subcommands:
  selftest                         check the seal test vector of seal-format.md (both ways)
  unlock   VAULT                   verify vault.json's check, unwrap the master key
  points   VAULT [--json]          list recovery points (--json: the manifests)
  cat      VAULT NAME [OUT]        write one object's plaintext (to stdout or OUT)
  vhd      VAULT DISKID OUT.vhd    rebuild a stored disk as the exact VHD file
  raw      VAULT DISKID OUT        the disk's virtual bytes, through its parents
  ls       VAULT ITEM [--point N]  list a files-kind point's entries
  extract  VAULT ITEM OUT [--point N]   extract a files or system-state point
                                   into the folder OUT; a volume point into the
                                   image file OUT

ITEM is `machine/item`, or just `item` when only one machine has it.
--point takes a point number (default: the newest).
"""

import argparse
import base64
import hashlib
import json
import os
import sqlite3
import stat
import struct
import sys
import tempfile
import unicodedata
import zlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import zstandard


class FerryError(Exception):
    """An error with a stable code, as the documents name them."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


# ---------------------------------------------------------------------------
# Sealed objects (seal-format.md)
# ---------------------------------------------------------------------------

SEAL_MAGIC = b"FERRY"
SEAL_HEADER = 28          # magic 5, version 1, codec 1, flags 1, length 8, nonce 12
SEAL_TAG = 16
SEAL_OVERHEAD = SEAL_HEADER + SEAL_TAG
SEAL_LIMIT = 256 << 20    # ferry's default allocation limit for `length`
CODEC_NONE, CODEC_ZSTD, CODEC_DEFLATE = 0, 1, 2


def _decompress(codec, body, length, name):
    """Decompress a body into exactly `length` bytes (reading step 5)."""
    if codec == CODEC_NONE:
        return body
    try:
        if codec == CODEC_ZSTD:
            # One or more frames, with or without content size / checksum:
            # stream them all, never reading more than length + 1 bytes.
            reader = zstandard.ZstdDecompressor().stream_reader(
                body, read_across_frames=True)
            out = bytearray()
            while len(out) <= length:
                piece = reader.read(min(1 << 20, length + 1 - len(out)))
                if not piece:
                    break
                out += piece
        else:  # deflate: raw RFC 1951 stream, no zlib/gzip wrapper
            d = zlib.decompressobj(-15)
            out = d.decompress(body, length + 1)
            if not d.eof and len(out) <= length:
                raise zlib.error("deflate stream does not end")
    except (zstandard.ZstdError, zlib.error) as e:
        raise FerryError("SEAL_CORRUPT", f"object {name}: cannot decompress: {e}")
    if len(out) != length:
        raise FerryError("SEAL_CORRUPT",
                         f"object {name}: decompresses to {len(out)} bytes, header says {length}")
    return bytes(out)


def unseal(key, name, data, limit=SEAL_LIMIT):
    """Open a sealed object `data` stored under `name` with the master `key`.

    The checks follow seal-format.md "Reading", in its order.
    """
    if len(data) < SEAL_OVERHEAD:
        raise FerryError("SEAL_TRUNCATED", f"object {name}: {len(data)} bytes, fewer than 44")
    if data[0:5] != SEAL_MAGIC:
        raise FerryError("SEAL_BAD_MAGIC", f"object {name}: not a ferry object")
    if data[5] != 1:
        raise FerryError("SEAL_BAD_VERSION", f"object {name}: version {data[5]}")
    codec, flags = data[6], data[7]
    (length,) = struct.unpack(">Q", data[8:16])           # big-endian u64
    nonce = data[16:28]
    n = len(data) - SEAL_OVERHEAD
    if codec not in (CODEC_NONE, CODEC_ZSTD, CODEC_DEFLATE) or flags != 0:
        raise FerryError("SEAL_CORRUPT", f"object {name}: codec {codec}, flags {flags}")
    if length > limit:
        raise FerryError("SEAL_TOO_LARGE", f"object {name}: {length} bytes")
    if codec == CODEC_NONE and length != n:
        raise FerryError("SEAL_CORRUPT", f"object {name}: length {length} but body {n}")
    # AAD = the 28 header bytes as stored || UTF-8(name), no separator.
    aad = data[:SEAL_HEADER] + name.encode("utf-8")
    try:
        # cryptography takes ciphertext || tag, which is exactly data[28:].
        body = AESGCM(key).decrypt(nonce, data[SEAL_HEADER:], aad)
    except Exception:
        raise FerryError("SEAL_WRONG_NAME_OR_KEY",
                         f"object {name}: authentication failed (altered, renamed or another key)")
    return _decompress(codec, body, length, name)


def seal(key, name, plaintext, codec=CODEC_NONE, nonce=None, body=None):
    """Seal `plaintext` under `name` (for tests: ferry itself is the writer).

    `body` may be given to store a hand-made compressed body (several zstd
    frames, a frame with a checksum...); otherwise it is compressed with `codec`.
    """
    if body is None:
        if codec == CODEC_ZSTD:
            body = zstandard.ZstdCompressor(level=1).compress(plaintext)
        elif codec == CODEC_DEFLATE:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = c.compress(plaintext) + c.flush()
        else:
            body = plaintext
    nonce = os.urandom(12) if nonce is None else nonce
    header = SEAL_MAGIC + bytes([1, codec, 0]) + struct.pack(">Q", len(plaintext)) + nonce
    return header + AESGCM(key).encrypt(nonce, body, header + name.encode("utf-8"))


def selftest():
    """The test vector of seal-format.md, both ways."""
    key = bytes(range(32))
    obj = bytes.fromhex(
        "46455252590100000000000000000013101112131415161718191a1b"
        "1b9bea6430e949d6ab196d792f160b39b2333a"
        "5c2d4c6a37d41fddaa14372c0f41810c")
    assert unseal(key, "kat/ferry", obj) == b"ferry sealed object"
    assert seal(key, "kat/ferry", b"ferry sealed object", nonce=bytes(range(16, 28))) == obj
    for codec in (CODEC_ZSTD, CODEC_DEFLATE):
        text = b"ferry " * 1000
        assert unseal(key, "x", seal(key, "x", text, codec)) == text
    try:
        unseal(key, "kat/ferrY", obj)
        raise AssertionError("a wrong name opened the object")
    except FerryError as e:
        assert e.code == "SEAL_WRONG_NAME_OR_KEY"
    print("seal test vector: ok")


# ---------------------------------------------------------------------------
# The vault: vault.json, key slots, object storage
# ---------------------------------------------------------------------------

def _js_stringify(doc):
    """JSON.stringify(doc, null, 2) for the plain JSON vault.json holds.

    json.dumps with indent=2 and ensure_ascii=False writes the same text for
    strings, integers, lists and objects (JSON.stringify writes no space
    before ':' and keeps non-ASCII characters as they are).
    """
    return json.dumps(doc, indent=2, ensure_ascii=False, separators=(",", ": "))


def check_vault_json(path):
    """Parse vault.json and verify its `check` (seal-format.md, "Keys")."""
    raw = open(path, "rb").read()
    text = raw.decode("utf-8-sig")       # a byte-order mark is not covered
    doc = json.loads(text)
    if "check" in doc:
        rest = {k: v for k, v in doc.items() if k != "check"}
        # The rule: keys of every object sorted, JSON.stringify(doc, null, 2) + "\n".
        sorted_text = json.dumps(rest, indent=2, ensure_ascii=False,
                                 separators=(",", ": "), sort_keys=True) + "\n"
        # Files of 2026-12-06 hashed the keys in their stored order.
        stored_text = _js_stringify(rest) + "\n"
        digests = {hashlib.sha256(t.encode("utf-8")).hexdigest()
                   for t in (sorted_text, stored_text)}
        if doc["check"] not in digests:
            raise FerryError("VAULT_CONFIG_BAD", f"{path}: check does not match: the file is damaged")
    # Only after the check: format, version, then no unknown top-level field.
    if doc.get("format") != "ferry-vault":
        raise FerryError("VAULT_CONFIG_BAD", f"{path}: format is {doc.get('format')!r}")
    if doc.get("version") != 1:
        raise FerryError("VAULT_VERSION", f"{path}: a version {doc.get('version')} vault")
    unknown = set(doc) - {"format", "version", "id", "created", "defaults", "keys", "check"}
    if unknown:
        raise FerryError("VAULT_CONFIG_BAD", f"{path}: unknown field(s) {sorted(unknown)}")

    def hexdigits(v, n):
        return isinstance(v, str) and len(v) == n and all(c in "0123456789abcdef" for c in v)
    d = doc.get("defaults")
    if not hexdigits(doc.get("id"), 32):
        raise FerryError("VAULT_CONFIG_BAD", f"{path}: id is not 32 hex digits")
    if not isinstance(d, dict) or d.get("codec") not in ("none", "zstd", "deflate") or type(d.get("level")) is not int:
        raise FerryError("VAULT_CONFIG_BAD", f"{path}: defaults needs a codec and an integer level")
    if not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise FerryError("VAULT_CONFIG_BAD", f"{path}: keys holds no key slot")
    for i, s in enumerate(doc["keys"]):
        k = s.get("kdf") if isinstance(s, dict) else None
        if not hexdigits(s.get("id") if isinstance(s, dict) else None, 16):
            raise FerryError("VAULT_CONFIG_BAD", f"{path}: keys[{i}].id is not 16 hex digits")
        if not isinstance(k, dict) or k.get("name") != "scrypt" or not isinstance(k.get("salt"), str):
            raise FerryError("VAULT_CONFIG_BAD", f"{path}: keys[{i}].kdf is not scrypt with a salt")
        if not isinstance(s.get("nonce"), str) or not isinstance(s.get("wrapped"), str):
            raise FerryError("VAULT_CONFIG_BAD", f"{path}: keys[{i}] lacks nonce or wrapped")
    return doc


def check_cost(slot):
    """A slot's scrypt cost, as seal-format.md bounds it (KDF_BAD_PARAMS)."""
    kdf = slot["kdf"]
    N, r, p = kdf.get("N"), kdf.get("r"), kdf.get("p")
    ints = all(type(x) is int for x in (N, r, p))
    if not ints or N < 2 or N & (N - 1) or not 1 <= r <= 64 or not 1 <= p <= 64:
        raise FerryError("KDF_BAD_PARAMS", f"slot {slot['id']}: N={N} r={r} p={p}: "
                         "N must be a power of two, r and p from 1 to 64")
    if 128 * N * r * p > 1 << 31:     # 2 GiB, all lanes counted
        raise FerryError("KDF_BAD_PARAMS", f"slot {slot['id']}: N={N} r={r} p={p} asks more than 2 GiB")


def unwrap_master_key(doc, passphrase):
    """Try every key slot; return (slot id, master key)."""
    # Every slot's cost first: one bad slot stops the unlock.
    for slot in doc["keys"]:
        check_cost(slot)
    # passphrase' = UTF-8(NFC(passphrase))
    pw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    for slot in doc["keys"]:
        kdf = slot["kdf"]
        N, r, p = kdf["N"], kdf["r"], kdf["p"]
        salt = base64.b64decode(kdf["salt"])
        kek = hashlib.scrypt(pw, salt=salt, n=N, r=r, p=p, dklen=32,
                             maxmem=128 * N * r + 128 * r * p + (64 << 20))
        # slot AAD: "ferry-key-slot-v1" 0 vault-id 0 slot-id 0 N 0 r 0 p 0 salt(base64 text)
        aad = "\0".join(["ferry-key-slot-v1", doc["id"], slot["id"],
                         str(N), str(r), str(p), kdf["salt"]]).encode("utf-8")
        try:
            key = AESGCM(kek).decrypt(base64.b64decode(slot["nonce"]),
                                      base64.b64decode(slot["wrapped"]), aad)
        except Exception:
            continue
        if len(key) != 32:
            raise FerryError("VAULT_CONFIG_BAD", f"slot {slot['id']}: master key of {len(key)} bytes")
        return slot["id"], key
    raise FerryError("WRONG_PASSPHRASE", "no key slot opens with this passphrase")


class Vault:
    """A directory vault: the object `a/b/c` is the file VAULT/a/b/c."""

    def __init__(self, root, passphrase):
        self.root = root
        self.doc = check_vault_json(os.path.join(root, "vault.json"))
        self.slot, self.key = unwrap_master_key(self.doc, passphrase)

    def path(self, name):
        return os.path.join(self.root, *name.split("/"))

    def exists(self, name):
        return os.path.isfile(self.path(name))

    def list(self, prefix):
        """Names of the objects directly under `prefix/`.

        Only regular files are objects, and no name starting with '.': those
        are temporaries being written (`.ferry-tmp-<host>-<pid>-<hex>`) or
        not ferry's.
        """
        d = self.path(prefix)
        if not os.path.isdir(d):
            return []
        return sorted(f"{prefix}/{e}" for e in os.listdir(d)
                      if not e.startswith(".") and stat.S_ISREG(os.lstat(os.path.join(d, e)).st_mode))

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return unseal(self.key, name, f.read())

    def read_json(self, name):
        return json.loads(self.read(name))


# ---------------------------------------------------------------------------
# Items and points (vault-format.md)
# ---------------------------------------------------------------------------

def list_points(vault):
    """Every point manifest items/<machine>/<item>/points/<seq>, as JSON.

    The manifest is UTF-8 JSON: seq, time, machine, item, kind, source,
    chain (disk ids, base first), diskSize, size, stats, sources, seedId?,
    volumeBytes?.  Returns a list of (name, manifest), oldest first.
    """
    out = []
    items = vault.path("items")
    for machine in sorted(os.listdir(items)) if os.path.isdir(items) else []:
        if machine.startswith("."):
            continue
        for item in sorted(os.listdir(os.path.join(items, machine))):
            if item.startswith("."):
                continue
            for name in vault.list(f"items/{machine}/{item}/points"):
                seq = name.rsplit("/", 1)[1]
                if len(seq) == 8 and seq.isdigit():     # <seq>: 8 decimal digits
                    out.append((name, vault.read_json(name)))
    # ferry's order: time, then machine, item, seq (ferry compares the names
    # with the locale's collation; this compares code points, which differs
    # only for two points of the same millisecond)
    out.sort(key=lambda p: (p[1]["time"], p[1]["machine"], p[1]["item"], p[1]["seq"]))
    return out


def find_point(vault, item_arg, seq=None):
    """The point manifest of ITEM (`machine/item` or `item`), newest or number `seq`."""
    machine, _, item = item_arg.rpartition("/")
    found = [(n, p) for n, p in list_points(vault)
             if p.get("item") == item and (not machine or p.get("machine") == machine)]
    machines = {p.get("machine") for _, p in found}
    if not found:
        raise FerryError("NO_POINT", f"no recovery point of {item_arg}")
    if len(machines) > 1:
        raise FerryError("USAGE", f"{item} exists on several machines: {sorted(machines)}; give machine/item")
    if seq is not None:
        found = [(n, p) for n, p in found if p.get("seq") == seq]
        if not found:
            raise FerryError("NO_POINT", f"no point {seq} of {item_arg}")
    return found[-1]


# ---------------------------------------------------------------------------
# Stored disks (seed-format.md "Stored disks") and VHD 1.0 (Microsoft spec)
# ---------------------------------------------------------------------------

HEAD_MAGIC = b"FRRYHEAD"
SECTOR = 512
NO_BLOCK = 0xFFFFFFFF


def parse_footer(b):
    """The fields of a 512-byte VHD footer that a reader needs (big-endian)."""
    if b[0:8] != b"conectix":
        raise FerryError("VHD_BAD_FOOTER", "no conectix cookie")
    s = sum(b[0:64]) + sum(b[68:512])
    if (~s & 0xFFFFFFFF) != struct.unpack(">I", b[64:68])[0]:
        # ferry stores foreign VHDs as they are, wrong checksums included
        print("warning: VHD footer checksum does not match", file=sys.stderr)
    return {
        "dataOffset": struct.unpack(">Q", b[16:24])[0],
        "currentSize": struct.unpack(">Q", b[48:56])[0],
        "diskType": struct.unpack(">I", b[60:64])[0],      # 2 fixed, 3 dynamic, 4 differencing
        "uniqueId": b[68:84].hex(),
    }


def parse_dyn_header(b):
    if b[0:8] != b"cxsparse":
        raise FerryError("VHD_BAD_HEADER", "no cxsparse cookie")
    return {
        "tableOffset": struct.unpack(">Q", b[16:24])[0],
        "maxTableEntries": struct.unpack(">I", b[28:32])[0],
        "blockSize": struct.unpack(">I", b[32:36])[0],
        "parentUniqueId": b[40:56].hex(),
    }


class StoredDisk:
    """A disk kept in the vault as `disks/<id>/head` + `disks/<id>/blocks/<i>`.

    Reads the virtual disk lazily, one block object at a time.
    """

    def __init__(self, vault, disk_id, parent=None):
        self.vault, self.id, self.parent = vault, disk_id, parent
        self.prefix = f"disks/{disk_id}"
        head = vault.read(f"{self.prefix}/head")
        if head[0:8] != HEAD_MAGIC:
            raise FerryError("DISK_DAMAGED", f"{self.prefix}/head: no FRRYHEAD magic")
        (j,) = struct.unpack(">I", head[8:12])
        self.meta = json.loads(head[12:12 + j])
        if self.meta.get("v") != 1:
            raise FerryError("DISK_DAMAGED", f"{self.prefix}/head: version {self.meta.get('v')}")
        # Region bytes follow the JSON, in order.
        self.regions, pos = [], 12 + j
        for r in self.meta["regions"]:
            self.regions.append((r["offset"], head[pos:pos + r["length"]]))
            pos += r["length"]
        if pos != len(head):
            raise FerryError("DISK_DAMAGED", f"{self.prefix}/head: {len(head) - pos} stray bytes")
        self.type = self.meta["type"]
        self.file_size = self.meta["fileSize"]
        if not self.regions:
            raise FerryError("DISK_DAMAGED", f"{self.prefix}/head: no region")
        # the footer is the last region (the file's end); 511 bytes for old
        # Virtual PC disks, whose footer lacks the reserved byte at its end
        self.footer = parse_footer(self.regions[-1][1][:SECTOR].ljust(SECTOR, b"\0"))
        if self.footer["uniqueId"] != disk_id:
            raise FerryError("DISK_DAMAGED", f"{self.prefix}: footer id {self.footer['uniqueId']}")
        self.size = self.footer["currentSize"]
        self._cache = {}
        if self.type == "fixed":
            self.block_size = 2 << 20
            self.bitmap_bytes = 0
            self.bat = None
            self.fixed_blocks = set(self.meta.get("fixedBlocks", []))
        else:
            # dynamic header at the footer's Data Offset, BAT at the header's
            # Table Offset: both inside the first region (the file's prefix)
            self.header = parse_dyn_header(self._file_bytes(self.footer["dataOffset"], 1024, first=True))
            self.block_size = self.header["blockSize"]
            # sector bitmap: one bit per sector, padded to whole sectors
            bitmap_bits = self.block_size // SECTOR
            self.bitmap_bytes = (bitmap_bits + 8 * SECTOR - 1) // (8 * SECTOR) * SECTOR
            n = self.header["maxTableEntries"]
            raw = self._file_bytes(self.header["tableOffset"], 4 * n, first=True)
            self.bat = struct.unpack(f">{n}I", raw)

    def _file_bytes(self, off, length, first=False):
        """Bytes of the VHD file covered by the head's regions (or its first one)."""
        for roff, data in self.regions[:1] if first else self.regions:
            if roff <= off and off + length <= roff + len(data):
                return data[off - roff: off - roff + length]
        raise FerryError("DISK_DAMAGED", f"{self.prefix}/head: no region holds file bytes {off}+{length}")

    def block_names(self):
        """(index, file offset) of every block object the head refers to."""
        if self.type == "fixed":
            return [(i, i * self.block_size) for i in sorted(self.fixed_blocks)]
        return [(i, e * SECTOR) for i, e in enumerate(self.bat) if e != NO_BLOCK]

    def block(self, i):
        """Plaintext of block object i (bitmap + data), or None if not stored."""
        if i in self._cache:
            return self._cache[i]
        stored = (i in self.fixed_blocks) if self.type == "fixed" else \
            (i < len(self.bat) and self.bat[i] != NO_BLOCK)
        data = self.vault.read(f"{self.prefix}/blocks/{i}") if stored else None
        # dynamic: bitmap + block; fixed: a 2 MiB chunk, the last one short
        want = self.bitmap_bytes + self.block_size if self.type != "fixed" else \
            min(self.block_size, self.size - i * self.block_size)
        if data is not None and len(data) != want:
            raise FerryError("BLOCK_DAMAGED", f"{self.prefix}/blocks/{i}: {len(data)} bytes, not {want}")
        if len(self._cache) > 8:
            self._cache.pop(next(iter(self._cache)))
        self._cache[i] = data
        return data

    def read(self, off, length):
        """Virtual bytes [off, off+length), through the parent chain."""
        out = bytearray()
        while length > 0:
            i, within = divmod(off, self.block_size)
            n = min(length, self.block_size - within)
            blk = self.block(i)
            if blk is None:
                out += self.parent.read(off, n) if self.parent else bytes(n)
            elif self.type == "differencing":
                # Sector by sector through the bitmap (MSB first): a clear
                # bit means "read the parent".
                for s in range(within // SECTOR, (within + n + SECTOR - 1) // SECTOR):
                    a = max(within, s * SECTOR)
                    b = min(within + n, (s + 1) * SECTOR)
                    if blk[s >> 3] & (0x80 >> (s & 7)):
                        out += blk[self.bitmap_bytes + a: self.bitmap_bytes + b]
                    else:
                        sub = i * self.block_size + a
                        out += self.parent.read(sub, b - a) if self.parent else bytes(b - a)
            else:
                piece = blk[self.bitmap_bytes + within: self.bitmap_bytes + within + n]
                out += piece + bytes(n - len(piece))   # a fixed disk's last chunk is short
            off += n
            length -= n
        return bytes(out)

    def write_vhd(self, out_path):
        """Lay the regions and blocks at their offsets in a file of fileSize bytes."""
        with open(out_path, "wb") as f:
            f.truncate(self.file_size)          # bytes nothing covers are zero
            for off, data in self.regions:
                f.seek(off)
                f.write(data)
            for i, off in self.block_names():
                f.seek(off)
                f.write(self.vault.read(f"{self.prefix}/blocks/{i}"))


def open_with_parents(vault, disk_id):
    """A stored disk with its parents, found by the dynamic header's parent id."""
    ids = [disk_id]
    while True:
        d = StoredDisk(vault, ids[0])
        if d.type != "differencing":
            break
        if d.header["parentUniqueId"] in ids or len(ids) > 256:
            raise FerryError("VHD_PARENT_CYCLE", f"disk {disk_id}: its chain loops")
        ids.insert(0, d.header["parentUniqueId"])
    return open_chain(vault, ids)


def open_chain(vault, chain):
    """The point's disks, base first (`chain` in the point manifest)."""
    disk = None
    for disk_id in chain:
        disk = StoredDisk(vault, disk_id, parent=disk)
    return disk


# ---------------------------------------------------------------------------
# The files-kind volume (volume-format.md); all integers little-endian
# ---------------------------------------------------------------------------

SB_SIZE = 4096
MAX_CATALOG_EXTENTS = 236


def read_superblock(disk):
    """Decode and check the superblock at disk offset 0, in the documented order.

    All offsets are byte offsets in the virtual disk (`disk.read`).
    """
    if disk.size < SB_SIZE:
        raise FerryError("VOLUME_BAD_MAGIC", "the disk is too small for a superblock")
    b = disk.read(0, SB_SIZE)
    if b[0:8] != b"FERRYVOL":
        raise FerryError("VOLUME_BAD_MAGIC", "no FERRYVOL superblock at offset 0")
    if hashlib.sha256(b[0:4064]).digest() != b[4064:4096]:
        raise FerryError("VOLUME_BAD_CHECKSUM", "superblock checksum")
    (version, sb_size) = struct.unpack_from("<II", b, 8)
    if version != 1:
        raise FerryError("VOLUME_BAD_VERSION", f"volume version {version}")
    sb = {"version": version, "sbSize": sb_size, "uuid": b[16:32].hex()}
    (sb["generation"], sb["writtenNs"]) = struct.unpack_from("<Qq", b, 32)
    (sb["chunkSize"], sb["align"], sb["dataStart"], sb["allocPtr"], sb["catalogSize"],
     sb["catalogExtentCount"], sb["flags"]) = struct.unpack_from("<IIQQQII", b, 48)
    sb["catalogSha256"] = b[88:120]
    (sb["diskSize"],) = struct.unpack_from("<Q", b, 120)
    n = sb["catalogExtentCount"]

    def bad(what):
        raise FerryError("VOLUME_BAD_FIELD", what)
    # The documented ranges, in their order.
    for f in ("generation", "dataStart", "allocPtr", "catalogSize", "diskSize"):
        if sb[f] > (1 << 53) - 1:
            bad(f"{f} is too large ({sb[f]})")
    if n > MAX_CATALOG_EXTENTS:
        bad(f"catalogExtentCount {n} exceeds {MAX_CATALOG_EXTENTS}")
    ext = [struct.unpack_from("<QQ", b, 256 + 16 * k) for k in range(n)]
    if sum(l for _, l in ext) != sb["catalogSize"]:
        bad("catalog extents do not add up to catalogSize")
    if sb["chunkSize"] == 0 or sb["align"] == 0 or sb["chunkSize"] % sb["align"]:
        bad(f"chunkSize {sb['chunkSize']} is not a multiple of align {sb['align']}")
    for off, l in ext:
        if off + l > disk.size:
            bad(f"catalog extent {off}+{l} lies past the end of the disk")
    # Stricter than ferry (the docs allow it): what ferry always writes.
    if sb_size != SB_SIZE or sb["align"] != 4096 or sb["flags"] != 0 or n < 1 \
            or sb["allocPtr"] < sb["dataStart"] \
            or any(off % 4096 or off < sb["dataStart"] or off + l > sb["allocPtr"] for off, l in ext):
        bad("sbSize, align, flags or a catalog extent is not as ferry writes them")
    sb["catalogExtents"] = ext
    return sb


def open_catalog(disk, sb, tmpdir):
    """Concatenate the catalog extents, check their SHA-256, open read-only."""
    path = os.path.join(tmpdir, "catalog.sqlite")
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for off, length in sb["catalogExtents"]:
            data = disk.read(off, length)
            h.update(data)
            f.write(data)
    if h.digest() != sb["catalogSha256"]:
        raise FerryError("VOLUME_BAD_CATALOG", "catalog SHA-256 does not match the superblock")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    meta = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM meta")}
    if _text(meta.get("format")) != "ferry-files-volume":
        raise FerryError("VOLUME_BAD_CATALOG", f"catalog format {meta.get('format')!r}")
    return db, meta


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def unpack_extents(blob):
    """{fileOffset u64, diskOffset u64, length u64} little-endian, by fileOffset."""
    if not blob:
        return []
    if len(blob) % 24:
        raise FerryError("VOLUME_BAD_CATALOG", f"extents blob of {len(blob)} bytes")
    return [struct.unpack_from("<QQQ", blob, k) for k in range(0, len(blob), 24)]


def file_chunks(disk, row, chunk_size):
    """Yield (chunk index, logical bytes) of a file row: extents, holes as zeros."""
    size = row["size"]
    extents = unpack_extents(row["extents"])
    for c in range(-(-size // chunk_size)):
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, size)
        buf = bytearray(hi - lo)
        for foff, doff, length in extents:
            a, b = max(lo, foff), min(hi, foff + length)
            if a < b:
                buf[a - lo: b - lo] = disk.read(doff + (a - foff), b - a)
        yield c, bytes(buf)


def verify_chunks(disk, row, chunk_size):
    """Indexes of chunks whose SHA-256 differs from the catalog's `chunks`."""
    sums = row["chunks"] or b""
    bad = []
    n = 0
    for c, data in file_chunks(disk, row, chunk_size):
        n += 1
        if hashlib.sha256(data).digest() != sums[32 * c: 32 * c + 32]:
            bad.append(c)
    if len(sums) != 32 * n:
        bad.append(f"chunks blob holds {len(sums) // 32} sums for {n} chunks")
    return bad


def fmt_entry(row):
    """One line per entry: type, mode, owner, size, path, link target."""
    path = os.fsdecode(row["path"])
    line = f"{row['type']:9} {row['mode']:05o} {row['uid']}:{row['gid']} {row['size']:>10} {path}"
    if row["type"] in ("symlink", "hardlink"):
        line += f" -> {os.fsdecode(row['target'])}"
    if row["type"] in ("chardev", "blockdev"):
        line += f" rdev={os.major(row['rdev'] & 0xFFFFFFFFFFFFFFFF)},{os.minor(row['rdev'] & 0xFFFFFFFFFFFFFFFF)}"
    if row["xattrs"]:
        names = [x[0] for x in json.loads(row["xattrs"])]
        line += f"  xattrs={names}"
    if row["implicit"]:
        line += "  (implicit)"
    return line


class Volume:
    """A files-kind volume read from a stored disk chain."""

    def __init__(self, vault, point, tmpdir):
        self.disk = open_chain(vault, point["chain"])
        self.sb = read_superblock(self.disk)
        self.db, self.meta = open_catalog(self.disk, self.sb, tmpdir)

    def entries(self):
        return self.db.execute("SELECT * FROM entries ORDER BY id").fetchall()


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------

PAGE = 4096
PIECE = 4 << 20


def _write_file(disk, row, dest):
    """Write a file's extents into dest.

    A file with holes (its extents hold fewer bytes than its size) is written
    sparse: whole zero 4 KiB pages (at file offsets that are multiples of
    4096) are skipped, so holes stay holes; a file without holes is written
    whole, zero pages included (volume-format.md, "File data").
    """
    size = row["size"]
    extents = unpack_extents(row["extents"])
    sparse = sum(length for _, _, length in extents) < size
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        for foff, doff, length in extents:
            length = min(length, max(0, size - foff))      # never past the size
            done = 0
            while done < length:
                n = min(PIECE, length - done)
                data = disk.read(doff + done, n)
                if not sparse:
                    os.pwrite(fd, data, foff + done)
                else:
                    at = foff + done                      # file offset of data[0]
                    p = 0
                    while p < n:
                        q = min(n, (at + p) // PAGE * PAGE + PAGE - at)
                        piece = data[p:q]
                        if q - p < PAGE or piece.count(0) != len(piece):
                            os.pwrite(fd, piece, at + p)
                        p = q
                done += n
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _check_written(dest, row, chunk_size):
    """Compare the written file's chunks with the catalog's SHA-256 list."""
    sums = row["chunks"] or b""
    bad, c = [], 0
    with open(dest, "rb") as f:
        while True:
            data = f.read(chunk_size)
            if not data:
                break
            if hashlib.sha256(data).digest() != sums[32 * c:32 * c + 32]:
                bad.append(c)
            c += 1
    if len(sums) != 32 * c:
        bad.append(f"{len(sums) // 32} sums for {c} chunks")
    return bad


def _apply_meta(dest, row, warn):
    """Owner, mode, xattrs, times - in that order (chown clears setuid bits)."""
    is_link = row["type"] == "symlink"
    if os.geteuid() == 0:
        os.chown(dest, row["uid"], row["gid"], follow_symlinks=False)
    if not is_link:
        os.chmod(dest, row["mode"] & 0o7777)
    for name, value in json.loads(row["xattrs"]) if row["xattrs"] else []:
        try:
            # xattr names are the name's bytes as a latin1 string
            os.setxattr(dest, name.encode("latin1"), base64.b64decode(value),
                        follow_symlinks=False)
        except OSError as e:
            warn(f"xattr {name} on {os.fsdecode(dest)}: {e}")
    os.utime(dest, ns=(row["atime_ns"], row["mtime_ns"]), follow_symlinks=False)


def extract(vol, out, log=print, warn=None):
    """Extract every entry of the volume under `out` (`/a/b` -> `out/a/b`)."""
    warnings = []
    warn = warn or (lambda m: (warnings.append(m), print("warning:", m, file=sys.stderr)))
    rows = vol.entries()
    by_id = {r["id"]: r for r in rows}
    base = os.fsencode(os.path.abspath(out)).rstrip(b"/")
    chunk_size = vol.sb["chunkSize"]
    os.makedirs(base, exist_ok=True)

    def dest(path):
        return base + (path if path != b"/" else b"")

    dirs = []
    for row in rows:                       # ids: a directory before its contents
        log(fmt_entry(row))
        d, t = dest(row["path"]), row["type"]
        if t != "dir":
            os.makedirs(os.path.dirname(d), exist_ok=True)
        if t == "dir":
            os.makedirs(d, exist_ok=True)
            dirs.append((d, row))          # metadata after the contents
            continue
        elif t == "file":
            _write_file(vol.disk, row, d)
            bad = _check_written(d, row, chunk_size)
            if bad:
                warn(f"{os.fsdecode(row['path'])}: damaged chunks {bad}")
        elif t == "symlink":
            os.symlink(row["target"], d)
        elif t == "hardlink":
            # the data is the `file` row whose id is link_group
            os.link(dest(by_id[row["link_group"]]["path"]), d, follow_symlinks=False)
            continue                       # same inode: metadata already set
        elif t == "fifo":
            os.mkfifo(d)
        elif t in ("chardev", "blockdev"):
            kind = stat.S_IFCHR if t == "chardev" else stat.S_IFBLK
            os.mknod(d, kind | 0o600, row["rdev"] & 0xFFFFFFFFFFFFFFFF)
        elif t == "socket":
            warn(f"{os.fsdecode(row['path'])}: a socket is not recreated")
            continue
        else:
            warn(f"{os.fsdecode(row['path'])}: unknown type {t}")
            continue
        _apply_meta(d, row, warn)
    for d, row in reversed(dirs):          # deepest first, so times stay
        if row["path"] != b"/":            # OUT keeps its own owner, mode and times,
            _apply_meta(d, row, warn)      # as ferry restore --to does
    return warnings


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def write_raw(disk, size, out):
    """The first `size` virtual bytes of `disk` into the file `out` (zeros sparse)."""
    with open(out, "wb") as f:
        for off in range(0, size, PIECE):
            data = disk.read(off, min(PIECE, size - off))
            if data.count(0) == len(data):
                f.seek(len(data), os.SEEK_CUR)
            else:
                f.write(data)
        f.truncate(size)
    print(f"wrote {out} ({size} bytes)")


def _vault(path):
    pw = os.environ.get("FERRY_PASSPHRASE")
    if pw is None:
        raise FerryError("USAGE", "set FERRY_PASSPHRASE")
    return Vault(path, pw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest")
    sub.add_parser("unlock").add_argument("vault")
    p = sub.add_parser("points")
    p.add_argument("vault"); p.add_argument("--json", action="store_true")
    p = sub.add_parser("cat")
    p.add_argument("vault"); p.add_argument("name"); p.add_argument("out", nargs="?")
    for c in ("vhd", "raw"):
        p = sub.add_parser(c)
        p.add_argument("vault"); p.add_argument("disk"); p.add_argument("out")
    for c in ("ls", "extract"):
        p = sub.add_parser(c)
        p.add_argument("vault"); p.add_argument("item")
        if c == "extract":
            p.add_argument("out")
        p.add_argument("--point", type=int)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "selftest":
            selftest()
            return 0
        v = _vault(a.vault)
        if a.cmd == "unlock":
            print(f"vault {v.doc['id']}: vault.json check ok, master key from slot {v.slot}")
        elif a.cmd == "points" and a.json:
            print(json.dumps([p for _, p in list_points(v)], indent=1))
        elif a.cmd == "points":
            print("seq\ttime\tmachine\titem\tkind\tsource\tsize\tchain")
            for _, p in list_points(v):
                print(f"{p['seq']}\t{p['time']}\t{p['machine']}\t{p['item']}\t{p['kind']}\t"
                      f"{p.get('source')}\t{p.get('size')}\t{','.join(p['chain'])}")
        elif a.cmd == "cat":
            data = v.read(a.name)
            if a.out:
                open(a.out, "wb").write(data)
            else:
                sys.stdout.buffer.write(data)
        elif a.cmd == "vhd":
            StoredDisk(v, a.disk).write_vhd(a.out)
            print(f"wrote {a.out}")
        elif a.cmd == "raw":
            disk = open_with_parents(v, a.disk)
            write_raw(disk, disk.size, a.out)
        else:
            name, point = find_point(v, a.item, a.point)
            if point["kind"] == "volume" and a.cmd == "extract":
                # the virtual disk is the volume itself; volumeBytes when it
                # is not whole sectors
                write_raw(open_chain(v, point["chain"]),
                          point.get("volumeBytes", point["diskSize"]), a.out)
                return 0
            if point["kind"] not in ("files", "system-state"):
                raise FerryError("USAGE", f"{name} is a {point['kind']} point: extract it as an image")
            with tempfile.TemporaryDirectory(prefix="ferry-read-") as tmp:
                vol = Volume(v, point, tmp)
                sb = vol.sb
                print(f"# {name}: volume {sb['uuid']} generation {sb['generation']}, "
                      f"catalog {sb['catalogSize']} bytes in {sb['catalogExtentCount']} extent(s), "
                      f"allocPtr {sb['allocPtr']}", file=sys.stderr)
                if a.cmd == "ls":
                    for row in vol.entries():
                        print(fmt_entry(row))
                        if row["type"] == "file":
                            bad = verify_chunks(vol.disk, row, sb["chunkSize"])
                            if bad:
                                print(f"  damaged chunks: {bad}")
                else:
                    warnings = extract(vol, a.out)
                    vol.db.close()
                    return 3 if warnings else 0
                vol.db.close()
        return 0
    except FerryError as e:
        print(f"ferry_read: {e}", file=sys.stderr)
        return 12 if e.code == "WRONG_PASSPHRASE" else 1


if __name__ == "__main__":
    sys.exit(main())
