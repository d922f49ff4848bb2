#!/usr/bin/env bash
# What an ext4 range shift (fallocate FALLOC_FL_INSERT_RANGE /
# COLLAPSE_RANGE, imagechain's range shifts) costs on a clean 1 GiB file,
# with its page cache full and empty, against dropping that cache alone
# (fadvise DONTNEED) and against a shift with 117 MiB dirty past it. Each
# figure includes starting the fallocate command. Three runs.
#
#   bash hack/shift-cost.sh DIR        natively, in DIR (on ext4)
#   PRECOPY_VM_SCRATCH=ext4 bash integration/vm/run.sh -m 12G -- \
#     bash hack/shift-cost.sh /run/containerd     in the VM, on its ext4 disk
set -eu
dir=${1:?usage: shift-cost.sh DIR (on ext4)}
f=$(mktemp "$dir/shift-cost.XXXXXX")
trap 'rm -f "$f"' EXIT
ms() {
	local s e
	s=$(date +%s%N)
	"$@"
	e=$(date +%s%N)
	echo $(((e - s) / 1000000))
}
echo "shift-cost: kernel $(uname -r), $(findmnt -n -o FSTYPE -T "$dir") at $dir"
dd if=/dev/zero of="$f" bs=1M count=1024 status=none
sync
for i in 1 2 3; do
	cat "$f" >/dev/null
	a=$(ms fallocate --insert-range -o 4096 -l 4096 "$f")
	cat "$f" >/dev/null
	b=$(ms fallocate --collapse-range -o 4096 -l 4096 "$f")
	sync
	echo 3 >/proc/sys/vm/drop_caches
	c=$(ms fallocate --insert-range -o 4096 -l 4096 "$f")
	d=$(ms fallocate --collapse-range -o 4096 -l 4096 "$f")
	cat "$f" >/dev/null
	e=$(ms dd if="$f" iflag=nocache count=0 status=none)
	cat "$f" >/dev/null
	# A second shift right after a first: nothing cached past it any more.
	g1=$(ms fallocate --insert-range -o 4096 -l 4096 "$f")
	g2=$(ms fallocate --insert-range -o 8192 -l 4096 "$f")
	fallocate --collapse-range -o 4096 -l 8192 "$f"
	cat "$f" >/dev/null
	dd if=/dev/zero of="$f" bs=4096 count=30000 seek=200000 conv=notrunc status=none
	h=$(ms fallocate --insert-range -o 4096 -l 4096 "$f")
	fallocate --collapse-range -o 4096 -l 4096 "$f"
	echo "run $i: cached insert=${a}ms collapse=${b}ms; uncached insert=${c}ms collapse=${d}ms; drop the cache alone=${e}ms; cached, first insert=${g1}ms second=${g2}ms; 117 MiB dirty past it, insert=${h}ms"
done
