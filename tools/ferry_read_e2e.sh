#!/bin/bash
# End-to-end check of tools/ferry_read.py against ferry itself:
# seed a small tree onto 2 disks, import, restore with ferry, extract with
# ferry_read.py, compare content and metadata, and rebuild the VHD both ways.
# Run from the repository root after `npx tsc -p .`; root (for chown, mknod).
# test/independent-reader.test.ts runs the same checks (and more) under ava.
set -euo pipefail
export FERRY_PASSPHRASE=${FERRY_PASSPHRASE:-independent-reader-pass-0123}
R="/usr/bin/python3 tools/ferry_read.py"   # Debian's python3, with python3-cryptography and python3-zstandard
W=$(mktemp -d /tmp/ferry-read-e2e.XXXX)
trap 'rm -rf "$W"' EXIT
S=$W/src; mkdir -p $S/sub/deeper $S/emptydir
printf 'hello world\n' > $S/hello.txt; : > $S/empty; chown 1234:5678 $S/empty
head -c 3145728 /dev/urandom > $S/rand.bin
truncate -s 10M $S/sparse.img
printf middle | dd of=$S/sparse.img bs=1 seek=5000000 conv=notrunc status=none
{ head -c 4096 /dev/urandom; head -c 4096 /dev/zero; head -c 4096 /dev/urandom; } |
  dd of=$S/sparse.img bs=4096 seek=256 conv=notrunc status=none              # a page of zeros written inside the data
{ printf A; head -c 131072 /dev/zero; printf B; } > $S/zeros-inside.bin       # zeros in a file without holes
truncate -s $((10 * 1048576 + 100)) $S/sparse-tail.img          # ends in a short, all-hole chunk
ln -s hello.txt $S/link; ln -s /nonexistent $S/dangling; ln $S/hello.txt $S/sub/hard
printf x > "$S/$(printf 'caf\xe9')"; seq 1 20000 > $S/sub/deeper/n.txt; chmod 640 $S/sub/deeper/n.txt
setfattr -n user.x -v value $S/hello.txt; chmod 4755 $S/sub; mkfifo $S/fifo
touch -d '2001-02-03 04:05:06.123456789' $S/hello.txt

node bin/ferry init -q $W/v
mkdir $W/d1 $W/d2
node bin/ferry seed -q --vault $W/v --item t --kind files --machine m --disk $W/d1 --disk $W/d2 --disk-capacity 3M $S
node bin/ferry import -q --vault $W/v $W/d1 $W/d2
node bin/ferry restore -q --vault $W/v --item t --machine m --to $W/ref

$R selftest
$R unlock $W/v
$R points $W/v
$R extract $W/v m/t $W/out > /dev/null

meta() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m %U:%G %s %b %n %l %T@ %A@\n' | LC_ALL=C sort); }
diff <(meta $W/ref) <(meta $W/out)
diff -r --no-dereference $W/ref $W/out | grep -v 'is a fifo while' && exit 1
diff <(cd $W/ref && getfattr -h -R -d -m - . 2>/dev/null) <(cd $W/out && getfattr -h -R -d -m - . 2>/dev/null)
echo "extraction equals ferry restore (content, type, mode, owner, size, blocks, links, ns times, xattrs)"

D=$($R points $W/v | awk 'NR == 2 { print $8 }')
$R vhd $W/v $D $W/mine.vhd > /dev/null
node bin/ferry vhd export -q --vault $W/v --disk $D --to $W/theirs.vhd
cmp $W/mine.vhd $W/theirs.vhd
qemu-img info $W/mine.vhd > /dev/null
echo "VHD rebuilt byte for byte ($D)"
