#!/usr/bin/env bash
# Runs one command inside Debian's 6.1 kernel under qemu and exits with its
# status. The host kernel lacks CONFIG_MEM_SOFT_DIRTY, so CRIU pre-dump
# (--track-mem) only works in this guest.
#
# The guest sees the host root read-only over 9p with a tmpfs overlay on top
# (so writes work but vanish), fresh tmpfs /tmp and /run, no network device.
# With PRECOPY_VM_SCRATCH=ext4, /run/containerd is instead an ext4 file
# system on a virtio-blk disk of its own (a sparse image in this run's temp
# dir) and the integration harness makes its private containerds' dirs
# there: their state dir (bundles, precopy's rounds) and temp dir (the
# checkpoint's image) on one disk file system, which tmpfs is not.
# The command runs in the caller's working directory with PATH (the caller's,
# plus the usual sbin/bin dirs), HOME, PRECOPY_* and GO* from the caller, and
# PRECOPY_IN_VM=1. Its output is streamed; boot noise goes to a console log
# that is kept and named when the guest fails to report a status.
#
# Exit status: the command's; 124 on timeout; 130/143 on SIGINT/SIGTERM;
# 125 when the guest stopped without reporting one (boot failure, panic).
set -euo pipefail

usage() {
	cat >&2 <<-EOF
		usage: ${0##*/} [-m MEM] [-t TIMEOUT_SECONDS] -- COMMAND [ARGS...]
		  -m  guest memory, qemu syntax (default \$PRECOPY_VM_MEM or 6G)
		  -t  seconds before the guest is killed (default \$PRECOPY_VM_TIMEOUT or 1800)
		env: PRECOPY_VM_CPUS (2), PRECOPY_VM_KERNEL (newest /boot/vmlinuz-6.1.*-amd64),
		     PRECOPY_CACHE (/var/cache/precopy; the initramfs goes to its vm/ dir),
		     PRECOPY_VM_SCRATCH (unset: all tmpfs; ext4: /run/containerd on an ext4 disk),
		     PRECOPY_VM_PREALLOC (1: back all guest memory before the boot, for benchmarks; 0 or unset: no)
	EOF
	exit 2
}
die() { echo "run.sh: $*" >&2; exit 125; }

mem=${PRECOPY_VM_MEM:-6G}
timeout=${PRECOPY_VM_TIMEOUT:-1800}
cpus=${PRECOPY_VM_CPUS:-2}
while getopts m:t:h opt; do
	case $opt in
	m) mem=$OPTARG ;;
	t) timeout=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || usage
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "timeout must be whole seconds, got '$timeout'"
scratch=${PRECOPY_VM_SCRATCH:-}
case $scratch in
'' | ext4) ;;
*) die "PRECOPY_VM_SCRATCH must be unset or ext4, got '$scratch'" ;;
esac

# PRECOPY_VM_PREALLOC=1: qemu backs all of the guest's memory before it
# boots (-mem-prealloc). This host is itself a VM that hands freed memory
# back to its host (free page reporting), so memory it has not used lately
# costs at its first touch: `go run ./hack/firsttouch -gib 2` took 5.0-6.1 s
# in 4 KiB pages (~10 us a page), 0.46 s with huge pages, against 0.03 s
# touched again. Without it every guest page qemu backs for the first time
# pays that inside whatever the guest is doing then (the smaller figure
# where the guest's memory gets huge pages). Benchmarks pay it once, before
# the boot, instead of inside what they measure. It is not the only noise
# under TCG, nor the largest: with it, the periodic
# bench's final dumps still froze 0.9-3.6 s in one run (33a9d28), most of
# the spread in the execs CRIU runs (tar and gzip per tmpfs mount).
prealloc=()
case ${PRECOPY_VM_PREALLOC:-} in
'' | 0) ;;
1)
	# All of it at once, where the guest would fill it gradually: say so
	# here rather than have qemu killed for memory at its start.
	size=${mem^^}
	size=${size%B}
	if [[ $size =~ ^[0-9]+$ ]]; then size=${size}M; fi # qemu's unit
	want=$(numfmt --from=iec "$size") || die "guest memory '$mem': not a size"
	have=$(($(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) * 1024))
	if [ "$want" -gt "$have" ]; then
		die "PRECOPY_VM_PREALLOC=1 backs all $mem of guest memory at once, and only $((have >> 20)) MiB are available (free some, lower -m, or set PRECOPY_VM_PREALLOC=0)"
	fi
	prealloc=(-mem-prealloc)
	;;
*) die "PRECOPY_VM_PREALLOC must be unset, 0 or 1, got '${PRECOPY_VM_PREALLOC}'" ;;
esac

# Already inside the guest (a nested TCG VM would crawl): just run it.
if [ "${PRECOPY_IN_VM:-}" = 1 ]; then exec "$@"; fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=${PRECOPY_VM_KERNEL:-$(printf '%s\n' /boot/vmlinuz-6.1.*-amd64 | sort -V | tail -n1)}
[ -r "$kernel" ] || die "no Debian 6.1 kernel in /boot (install linux-image-amd64; hack/deps.sh does)"
kver=${kernel##*/vmlinuz-}
moddir=/lib/modules/$kver
[ -d "$moddir" ] || die "$moddir missing for $kernel"
grep -qx CONFIG_MEM_SOFT_DIRTY=y "/boot/config-$kver" 2>/dev/null ||
	die "$kernel is not built with CONFIG_MEM_SOFT_DIRTY=y"
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
	die "/bin/busybox missing or not static (install busybox-static)"
fi
cache=${PRECOPY_CACHE:-/var/cache/precopy}/vm
mkdir -p "$cache"

# The pid in the name lets later runs remove what a SIGKILLed run left.
for d in "${TMPDIR:-/tmp}"/precopy-vm.*.*; do
	p=${d##*/precopy-vm.} p=${p%%.*}
	if [[ $p =~ ^[0-9]+$ ]] && ! kill -0 "$p" 2>/dev/null; then rm -rf "$d"; fi
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/precopy-vm.$$.XXXXXX")
qpid='' filter=''
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
	for p in $qpid $filter; do kill -KILL "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# --- initramfs: busybox, the 9p/overlay modules, init.sh as /init ----------
# Dependency order; Debian 6.1 has them all as plain .ko (compressed ones are
# unpacked here since busybox insmod may not read them). Built-ins skipped.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	netfs fscache 9pnet 9pnet_virtio 9p overlay)
# The scratch disk's, loaded only when it is attached (one initramfs
# serves both). `modprobe --show-depends virtio_blk ext4` for 6.1, minus
# crc32c-intel: crc32c_generic is enough, and the stage-1 insmod of a
# driver whose CPU feature is missing would fail the boot.
scratch_modules=(virtio_blk crc32c_generic crc16 mbcache jbd2 ext4)
mod_names=() mod_files=() mod_lists=()
# add_modules LIST MODULE...: into the initramfs, named in its /etc/LIST.
add_modules() {
	local list=$1 m f
	shift
	for m; do
		f=$(grep -m1 -oE "^[^:]*/$m\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep") || true
		if [ -n "$f" ]; then
			mod_names+=("$m") mod_files+=("$moddir/${f%:}") mod_lists+=("$list")
		elif ! grep -qE "/$m\.ko$" "$moddir/modules.builtin"; then
			die "module $m not found for $kver"
		fi
	done
}
add_modules modules "${modules[@]}"
add_modules modules.scratch "${scratch_modules[@]}"
# Rebuilt when any input changes; bump layout= when the build steps change.
key=$({
	echo "layout=2 $kver ${mod_names[*]} ${mod_lists[*]}"
	cat "$here/init.sh" /bin/busybox "${mod_files[@]}"
} | sha256sum | cut -c1-16)
initrd=$cache/initramfs-$kver-$key.cpio.gz
if [ ! -s "$initrd" ]; then
	root=$tmp/initramfs
	mkdir -p "$root"/{bin,dev,proc,sys,etc,lib/modules}
	cp /bin/busybox "$root/bin/busybox"
	install -m 0755 "$here/init.sh" "$root/init"
	for i in "${!mod_names[@]}"; do
		out=$root/lib/modules/${mod_names[i]}.ko
		case ${mod_files[i]} in
		*.xz) xz -dc "${mod_files[i]}" >"$out" ;;
		*.zst) zstd -qdc "${mod_files[i]}" >"$out" ;;
		*.gz) gzip -dc "${mod_files[i]}" >"$out" ;;
		*) cp "${mod_files[i]}" "$out" ;;
		esac
		echo "${mod_names[i]}" >>"$root/etc/${mod_lists[i]}"
	done
	(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$cache/.initramfs.$$"
	mv -f "$cache/.initramfs.$$" "$initrd" # atomic: concurrent runs see old or new
fi

# --- the kernel: bzImage decompression under TCG takes ~2.5 s per boot, so
# boot the uncompressed vmlinux through its PVH entry point (CONFIG_PVH=y)
# instead, extracted once from the xz payload inside the bzImage.
if grep -qx CONFIG_PVH=y "/boot/config-$kver" && grep -qx CONFIG_KERNEL_XZ=y "/boot/config-$kver"; then
	vmlinux=$cache/vmlinux-$kver-$(stat -c %s-%Y "$kernel")
	if [ ! -s "$vmlinux" ]; then
		# <(...) not a pipe: xz stops at the stream's end, tail's SIGPIPE would trip pipefail
		off=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$kernel" | cut -d: -f1)
		if [ -n "$off" ] && xz -dc --single-stream <(tail -c +$((off + 1)) "$kernel") >"$cache/.vmlinux.$$" 2>/dev/null; then
			mv -f "$cache/.vmlinux.$$" "$vmlinux"
		else
			rm -f "$cache/.vmlinux.$$"
		fi
	fi
	if [ -s "$vmlinux" ]; then kernel=$vmlinux; fi
fi
# Images in use are touched; others (other checkouts' init.sh, old kernels,
# builds a kill interrupted) go after a week, never under a running boot.
touch "$initrd"
if [ "${kernel#"$cache"/}" != "$kernel" ]; then touch "$kernel"; fi
find "$cache" -maxdepth 1 \( -name 'initramfs-*' -o -name 'vmlinux-*' -o -name '.initramfs.*' \
	-o -name '.vmlinux.*' \) -mtime +7 -delete

# --- the per-run read-write share: stage 2, the job, the status -------------
share=$tmp/share
mkdir "$share"
cp "$here/stage2.sh" "$share/stage2.sh"
marker="@@precopy-vm-$$-$RANDOM$RANDOM@@" # unlikely to appear in real output
echo "$marker" >"$share/marker"

# Quotes $1 for POSIX sh (the job is sourced by dash) into $Q; no $(...),
# which would drop trailing newlines.
q() { Q="'${1//\'/\'\\\'\'}'"; }
path=${PATH:-}
for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
	case ":$path:" in *":$d:"*) ;; *) path=${path:+$path:}$d ;; esac
done
{
	q "$PWD"
	echo "cd $Q || { echo 'run.sh: working directory not visible in the guest' >&2; exit 125; }"
	echo "unset OLDPWD"
	q "$path" && echo "export PATH=$Q"
	q "${HOME:-/root}" && echo "export HOME=$Q PRECOPY_IN_VM=1"
	for name in $(compgen -e); do
		if [[ $name =~ ^(PRECOPY_|GO) && $name != PRECOPY_IN_VM ]]; then
			q "${!name}" && echo "export $name=$Q"
		fi
	done
	if [ -n "$scratch" ]; then
		# Where the harness makes its private containerds' dirs
		# (integration/harness/daemon.go).
		echo "export PRECOPY_CONTAINERD_DIR=/run/containerd"
	fi
	printf 'exec'
	for a in "$@"; do q "$a" && printf ' %s' "$Q"; done
	echo
} >"$share/job"

# The guest mounts fresh tmpfs on /tmp and /run, which would hide a working
# directory there (a CI clone under /tmp, say): share it into the guest at
# the same path; stage 1 mounts it.
workdir_share=()
case $PWD/ in
/tmp/* | /run/*)
	workdir_share=(-virtfs "local,path=$PWD,mount_tag=workdir,security_model=none,multidevs=remap")
	printf '%s\n' "$PWD" >"$share/workdir"
	;;
esac

# --- the scratch disk (PRECOPY_VM_SCRATCH=ext4) --------------------------------
# Sparse: the host stores only what the guest writes (a fresh ext4 is
# ~130 MiB, its journal), and it goes with the temp dir. 16 GiB: the
# periodic 1 GiB bench holds two checkpoint images in the content store,
# one being written, the rounds with the kept image, and the final image
# in the temp dir at once (~6 GiB), plus what GC has not yet freed.
# mkfs.ext4 on a regular file needs no loop device; it zeroes the inode
# tables by punching holes, so the guest's ext4lazyinit has nothing to do.
# cache=unsafe: the image dies with the run, so flushes (containerd's
# fsyncs of content, the journal's) need not reach the host's disk; the
# guest's own page cache and ext4 work are what is measured.
scratch_args=() append_scratch=
if [ -n "$scratch" ]; then
	command -v mkfs.ext4 >/dev/null || die "PRECOPY_VM_SCRATCH=ext4 needs mkfs.ext4 (e2fsprogs)"
	truncate -s 16G "$tmp/scratch.img"
	mkfs.ext4 -F -q -L precopy-scratch "$tmp/scratch.img" || die "mkfs.ext4 of the scratch disk failed"
	scratch_args=(-drive "file=$tmp/scratch.img,if=virtio,format=raw,cache=unsafe")
	append_scratch=" precopy.scratch=ext4" # stage 1 reads /proc/cmdline
fi

# --- boot ---------------------------------------------------------------------
log=$tmp/console.log
mkfifo "$tmp/out"
# Console lines keep their \r (guest tty onlcr); only the command's output,
# between the markers, reaches stdout. sed -u: a tr pipe would hold output back.
sed -u -n -e 's/\r$//' -e "/^$marker begin\$/,/^$marker end\$/{/^$marker /d;p}" <"$tmp/out" &
filter=$!
exec 3>"$tmp/out" # opened here so sed can never block on a fifo nobody opens

# Timeout without a watchdog process: qemu holds the only writer of the
# "alive" fifo, so a read on it returns at qemu's exit (EOF), at the timeout,
# or when a trapped signal arrives.
mkfifo "$tmp/alive"
# shellcheck disable=SC2094 # rw open first so that neither open blocks
exec 4<>"$tmp/alive" 5>"$tmp/alive" 6<"$tmp/alive" 4>&-

# pdeathsig: even if run.sh is SIGKILLed (Go's exec.CommandContext does),
# qemu dies with it. KVM is unavailable here: TCG only.
# panic=-1 + -no-reboot: a guest panic ends qemu at once instead of hanging.
# softlockup_panic=1 watchdog_thresh=60: a CPU stuck in the guest kernel
# for 120 s is such a panic, not an hour-long wait for the timeout (seen
# once: runc and another task spinning from boot on; a stall that long is
# no TCG slowness).
# loglevel=1: boot messages stay out of the console, KERN_EMERG (panics) not.
setpriv --pdeathsig KILL -- qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -smp "$cpus" -m "$mem" "${prealloc[@]}" \
	-nodefaults -no-user-config -display none -no-reboot -nic none \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 loglevel=1 panic=-1 softlockup_panic=1 watchdog_thresh=60$append_scratch" \
	-chardev "stdio,id=con,signal=off,logfile=$log" -serial chardev:con \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-virtfs "local,path=$share,mount_tag=results,security_model=none" \
	"${workdir_share[@]}" "${scratch_args[@]}" \
	</dev/null >&3 2>"$tmp/qemu.err" 6<&- &
qpid=$!
exec 3>&- 5>&- # qemu holds the only writers now: sed ends when qemu does

# stderr off until qemu is reaped: bash reports a killed job ("Killed ...")
# whenever it notices, not only in wait.
exec 7>&2 2>/dev/null
reason=
trap 'reason="interrupted by SIGINT"; kill -KILL $qpid' INT
trap 'reason="terminated by SIGTERM"; kill -KILL $qpid' TERM
set +e
read -r -t "$timeout" -u 6 _
if [ $? -gt 128 ] && [ -z "$reason" ]; then reason="timed out after ${timeout}s"; fi
if [ -n "$reason" ]; then kill -KILL "$qpid"; fi
qrc=0
while kill -0 "$qpid"; do wait "$qpid"; qrc=$?; done
wait "$filter"
exec 2>&7 7>&-
set -e

status=$(cat "$share/status" 2>/dev/null || true)
if [ -z "$reason" ] && [[ $status =~ ^[0-9]+$ ]]; then exit "$status"; fi

# No status: keep the console log (the temp dir goes away) and say why.
mkdir -p "$cache/logs"
find "$cache/logs" -name '*.log' -mtime +7 -delete
saved=$cache/logs/console-$(date +%Y%m%d-%H%M%S)-$$.log
{ cat "$log" 2>/dev/null || true; echo "--- qemu stderr (exit $qrc) ---"; cat "$tmp/qemu.err"; } >"$saved"
if [ -z "$reason" ]; then
	if grep -q 'soft lockup' "$log" 2>/dev/null; then
		reason="guest kernel soft lockup: $(grep -m1 -o 'soft lockup.*' "$log")"
	elif grep -q 'Kernel panic' "$log" 2>/dev/null; then
		reason="guest kernel panicked"
	elif [ -s "$tmp/qemu.err" ] && [ "$qrc" != 0 ]; then
		reason="qemu failed (exit $qrc): $(head -n1 "$tmp/qemu.err")"
	else
		reason="guest stopped without reporting an exit status (qemu exit $qrc)"
	fi
fi
echo "run.sh: $reason; full console log: $saved" >&2
case $reason in
timed*) exit 124 ;;
*SIGINT) exit 130 ;;
*SIGTERM) exit 143 ;;
*) exit 125 ;;
esac
