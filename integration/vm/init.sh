#!/bin/busybox sh
# Stage 1: /init of the initramfs that run.sh builds (busybox, the modules
# listed in /etc/modules and this script). Turns the host root, shared
# read-only over 9p, into a writable root (tmpfs overlay) and hands over to
# stage2.sh, which run.sh copied into the per-run read-write share.
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
# The cpio has no /dev/console node (building it needs no mknod), so the
# kernel started us without stdio: take the console now.
exec </dev/console >/dev/console 2>&1

# In dependency order (run.sh writes them so; built-in ones are left out).
while read -r m; do
	insmod "/lib/modules/$m.ko" || fail "insmod $m failed"
done </etc/modules

opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host /rw /newroot
mount -t 9p -o "$opts,ro" hostroot /host || fail "cannot mount the host root (9p hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	fail "cannot mount the overlay root"

# /run is a tmpfs (the host's /run must not show through); the results share
# lives under it so stage 2 and the command find it at a fixed path.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir /newroot/run/precopy-vm
mount -t 9p -o "$opts" results /newroot/run/precopy-vm || fail "cannot mount the results share"

# Busybox switch_root does not carry these over; keep them instead of
# leaving them mounted on the discarded initramfs.
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done

exec switch_root /newroot /bin/sh /run/precopy-vm/stage2.sh
