#!/bin/sh
# Stage 2: PID 1 in the guest's overlay root (the host root, writes going to
# tmpfs). run.sh copies this file into the per-run read-write share, mounted
# at /run/precopy-vm by stage 1, next to "job" (cd + environment + exec of the
# command) and "marker"; the exit status goes back as "status".
# /proc, /sys, /dev and /run were set up by stage 1.
share=/run/precopy-vm

mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -sfn pts/ptmx /dev/ptmx
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
# Bash's <(...) needs /dev/fd; devtmpfs does not provide these links.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
# CRIU and containerd need a writable /tmp; TMPDIR is not passed in.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

ip link set lo up
hostname precopy-vm

# run.sh shows only what is printed between the two marker lines.
marker=$(cat "$share/marker")
echo "precopy-vm: command starts at uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "$marker begin"
env -i /bin/sh "$share/job" </dev/null
rc=$?
echo "$marker end"

echo "$rc" >"$share/status.tmp" && mv "$share/status.tmp" "$share/status"
sync
# Asynchronous: PID 1 must stay alive until the power-off happens, or the
# kernel panics with "Attempted to kill init".
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
