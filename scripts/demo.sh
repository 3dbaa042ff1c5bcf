#!/usr/bin/env bash
# ferry's main job on a local vault, start to finish:
#   a sample tree -> seed onto two disk folders -> import into a vault -> restore -> compare;
# then the VHD engine on its own, checked by qemu-img.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY="bin/ferry" # (as a program: its #! line sets node's flags)
work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export FERRY_PASSPHRASE="demo passphrase, at least sixteen characters"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a sample tree to protect ($work/src)"
mkdir -p "$work/src"
mkdir -p "$work/src/doc"
mapfile -t docs < <(ls /usr/share/doc | head -150)
for d in "${docs[@]}"; do cp -a "/usr/share/doc/$d" "$work/src/doc/" 2>/dev/null || true; done
mkdir -p "$work/src/data/deep/er/still"
head -c 10000000 /dev/urandom > "$work/src/data/random.bin"
truncate -s 1G "$work/src/data/sparse.img"; printf 'middle' | dd of="$work/src/data/sparse.img" bs=1 seek=500000000 conv=notrunc status=none
ln -s ../random.bin "$work/src/data/deep/link"; ln "$work/src/data/random.bin" "$work/src/data/deep/er/hardlink.bin"
mkfifo "$work/src/data/fifo"; echo "nested" > "$work/src/data/deep/er/still/file.txt"
setfattr -n user.demo -v "hello" "$work/src/data/deep/er/still/file.txt" 2>/dev/null || true
du -sh --apparent-size "$work/src"

step "ferry init $work/vault"
$FERRY init "$work/vault"

step "ferry seed onto two disks of 14 MiB each"
$FERRY seed --vault "$work/vault" --item demo --kind files --disk "$work/disk1" --disk "$work/disk2" --disk-capacity 14M "$work/src"
ls "$work/disk1" "$work/disk2"

step "ferry import, disks in reverse order"
$FERRY import --vault "$work/vault" "$work/disk2"
$FERRY import --vault "$work/vault" "$work/disk1"

step "ferry points"
$FERRY points --vault "$work/vault"

step "ferry restore to a new place"
$FERRY restore --vault "$work/vault" --item demo --to "$work/restored"
# (atimes change as this very listing reads the tree, and a folder's size is its history: both left out)
listing() { (cd "$1" && { find . ! -type d -printf '%y %m %U %G %s %T@ %n %l %p\n'; find . -type d -printf '%y %m %U %G %T@ %p\n'; } | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
if diff <(listing "$work/src") <(listing "$work/restored$work/src") >/dev/null; then
  echo "restored tree equals the source: content, types, modes, owners, sizes, ns times, link counts, symlink targets"
else
  diff <(listing "$work/src") <(listing "$work/restored$work/src") | head -20; echo "MISMATCH"; exit 1
fi
cmp "$work/src/data/sparse.img" "$work/restored$work/src/data/sparse.img" && echo "sparse file equal; blocks used: $(du -k "$work/restored$work/src/data/sparse.img" | cut -f1) KiB of $(du -k --apparent-size "$work/src/data/sparse.img" | cut -f1) KiB"
getfattr -n user.demo "$work/restored$work/src/data/deep/er/still/file.txt" 2>/dev/null | grep -q hello && echo "xattrs restored"

step "the VHD engine: a disk from raw data, a child over it, merge, export, checked by qemu-img"
head -c 6000000 /dev/urandom > "$work/raw.img"; truncate -s 16M "$work/raw.img"
$FERRY vhd create "$work/base.vhd" --from "$work/raw.img"
qemu-img compare -f vpc -F raw "$work/base.vhd" "$work/raw.img"
$FERRY vhd create "$work/child.vhd" --parent "$work/base.vhd"
$FERRY vhd info "$work/child.vhd"
cp "$work/raw.img" "$work/expected.img"
node --input-type=module -e '
const { openChain } = await import("./dist/format/vhd/index.js");
const fs = await import("node:fs");
const d = await openChain(process.argv[1], { writable: true });
const patch = Buffer.alloc(3 << 20, 0x42);
await d.write(5 << 20, patch); await d.close();
const fd = fs.openSync(process.argv[2], "r+"); fs.writeSync(fd, patch, 0, patch.length, 5 << 20); fs.closeSync(fd);
' "$work/child.vhd" "$work/expected.img"
$FERRY vhd export "$work/child.vhd" --to "$work/flat.vhd" --type dynamic
qemu-img compare -f vpc -F raw "$work/flat.vhd" "$work/expected.img"
$FERRY vhd merge "$work/child.vhd"
qemu-img compare -f vpc -F raw "$work/base.vhd" "$work/expected.img"
$FERRY vhd check "$work/base.vhd"
step "demo done"
