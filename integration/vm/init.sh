#!/bin/busybox sh
# Stage 1: /init of the initramfs that run.sh builds (static busybox, the
# modules listed in /etc/modules, this script). Builds the guest's root: the
# host root (9p, read-only) under a tmpfs overlay, with everything CRIU,
# runc and containerd expect mounted, then switch_root to stage2.sh, which
# run.sh put in the per-run read-write share.
#
# All the setup happens here rather than in stage 2: under TCG every exec of
# a dynamically linked binary from the 9p root costs 50-100 ms (measured:
# 1.5 s for stage 2's mounts), busybox applets here cost almost nothing.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
	echo "precopy-vm stage1: $*"
	echo o >/proc/sysrq-trigger # power off: run.sh reports the missing status
	while :; do sleep 60; done  # PID 1 must not exit (kernel panics)
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The cpio has no /dev/console node (building it needs no mknod): make sure
# our stdio is the console.
exec </dev/console >/dev/console 2>&1

# In dependency order (run.sh writes them so; built-in ones are left out).
while read -r m; do
	insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done </etc/modules

# The scratch disk (run.sh, PRECOPY_VM_SCRATCH=ext4): containerd's dir on
# ext4, not tmpfs, moved onto /run/containerd once /run is there. Its
# modules load only then; the disk's node appears once virtio_blk has
# probed it.
case " $(cat /proc/cmdline) " in
*" precopy.scratch=ext4 "*)
	if [ -f /etc/modules.scratch ]; then
		while read -r m; do
			insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
		done </etc/modules.scratch
	fi
	i=0
	while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	mkdir /scratch
	mount -t ext4 /dev/vda /scratch || fail "cannot mount the scratch disk (ext4 on /dev/vda)"
	;;
esac

opts=trans=virtio,version=9p2000.L,msize=512000
r=/newroot
mkdir -p /host /rw $r
mount -t 9p -o "$opts,ro" hostroot /host || fail "cannot mount the host root (9p hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay $r ||
	fail "cannot mount the overlay root"

# Busybox switch_root does not carry /proc, /sys, /dev over: move them.
for d in proc sys dev; do mount --move /$d $r/$d; done
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $r/dev/pts
ln -sfn pts/ptmx $r/dev/ptmx
mount -t tmpfs -o nosuid,nodev tmpfs $r/dev/shm
# devtmpfs has no /dev/fd & co.; bash's <(...) needs /dev/fd.
ln -sfn /proc/self/fd $r/dev/fd
ln -sfn /proc/self/fd/0 $r/dev/stdin
ln -sfn /proc/self/fd/1 $r/dev/stdout
ln -sfn /proc/self/fd/2 $r/dev/stderr
# Nodes udev/kmod would create; opening them autoloads the module (CRIU's
# "criu check" wants /dev/net/tun).
mkdir -p $r/dev/net
mknod -m 0666 $r/dev/net/tun c 10 200
mount -t cgroup2 -o nsdelegate cgroup2 $r/sys/fs/cgroup
# Fresh tmpfs /run and /tmp (CRIU, runc and containerd write there; the
# host's must not show through). The results share lives under /run.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/tmp
if [ -d /scratch ]; then
	mkdir $r/run/containerd
	mount --move /scratch $r/run/containerd
fi
mkdir $r/run/precopy-vm
mount -t 9p -o "$opts" results $r/run/precopy-vm || fail "cannot mount the results share"
# A working directory under /tmp or /run, which the tmpfs above hide, comes
# as its own share (run.sh).
if [ -f $r/run/precopy-vm/workdir ]; then
	read -r w <$r/run/precopy-vm/workdir
	mkdir -p "$r$w" && mount -t 9p -o "$opts,msize=512000" workdir "$r$w" ||
		fail "cannot mount the working directory share at $w"
fi

ip link set lo up
hostname precopy-vm

# env -i: the command gets only what run.sh's job file exports.
exec env -i switch_root $r /bin/sh /run/precopy-vm/stage2.sh
