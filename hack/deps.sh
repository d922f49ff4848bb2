#!/usr/bin/env bash
# Brings a Debian 12 machine to what precopy builds and tests against:
# containerd + ctr + containerd-shim-runc-v2 and runc built from their Go
# modules, crictl and checkpointctl (the Kubernetes path's client and archive
# reader) and three CNI plugins (pod networks for the CRI bench) from theirs, CRIU built from Debian forky's source tarball, and the
# Debian packages CRIU, runc and the soft-dirty VM tier need. Idempotent: each piece
# is checked first and only installed when missing or at another version.
#
# Uses only Debian's package archive and the Go module proxy.
set -euo pipefail

CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
RUNC_VERSION=${RUNC_VERSION:-1.5.2}
# CRIU 4.2 is the first that dumps inet sockets on kernels from 6.16 on
# (they refuse SO_PASSCRED on them); Debian forky carries it.
CRIU_VERSION=${CRIU_VERSION:-4.2.1}
CRIU_SUITE=${CRIU_SUITE:-forky}
CRICTL_VERSION=${CRICTL_VERSION:-1.37.0}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-1.10.0}
# checkpointctl 1.7.0 needs go-criu v8.5.0, which the module proxy does not
# serve.
CHECKPOINTCTL_VERSION=${CHECKPOINTCTL_VERSION:-1.6.0}
PREFIX=${PREFIX:-/usr/local}
# CRIU alone can go elsewhere, to try a version beside the one in use.
CRIU_PREFIX=${CRIU_PREFIX:-$PREFIX}
CACHE=${PRECOPY_CACHE:-/var/cache/precopy}

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and binaries under $PREFIX)"
command -v go >/dev/null || die "go is not on PATH (Go 1.24 or newer is needed)"

debian_packages=(
	# build and CRIU's libraries
	build-essential pkg-config libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev
	protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev
	libnftables-dev libgnutls28-dev uuid-dev libaio-dev xz-utils
	# runtime: CRIU's network lock needs iptables-restore; runc's seccomp
	iptables libseccomp-dev
	# the soft-dirty VM tier
	qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2
)

install_debian_packages() {
	local missing=()
	for p in "${debian_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		log "Debian packages: present"
		return
	fi
	log "Debian packages: installing ${missing[*]}"
	apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# have BINARY VERSION-REGEX: true when BINARY answers --version with it.
have() {
	local bin=$1 want=$2
	[ -x "$PREFIX/bin/$bin" ] || return 1
	"$PREFIX/bin/$bin" --version 2>/dev/null | grep -E "$want" >/dev/null
}

go_install() { # go_install LDFLAGS PKG@VERSION...
	local ldflags=$1; shift
	local tmp; tmp=$(mktemp -d)
	GOBIN=$tmp GOFLAGS=-mod=mod go install -ldflags "$ldflags" "$@" || { rm -rf "$tmp"; die "go install $* failed"; }
	install -m 0755 "$tmp"/* "$PREFIX/bin/"
	rm -rf "$tmp"
}

install_containerd() {
	if have containerd " v?${CONTAINERD_VERSION//./\\.}( |$)" && have ctr "${CONTAINERD_VERSION//./\\.}" &&
		[ -x "$PREFIX/bin/containerd-shim-runc-v2" ] &&
		"$PREFIX/bin/containerd-shim-runc-v2" -v 2>/dev/null | grep -q "${CONTAINERD_VERSION}"; then
		log "containerd $CONTAINERD_VERSION: present"
		return
	fi
	log "containerd $CONTAINERD_VERSION: building containerd, ctr, containerd-shim-runc-v2"
	local m=github.com/containerd/containerd/v2
	go_install "-X $m/version.Version=v$CONTAINERD_VERSION" \
		"$m/cmd/containerd@v$CONTAINERD_VERSION" "$m/cmd/ctr@v$CONTAINERD_VERSION" \
		"$m/cmd/containerd-shim-runc-v2@v$CONTAINERD_VERSION"
}

install_runc() {
	if have runc "^runc version ${RUNC_VERSION//./\\.}$"; then
		log "runc $RUNC_VERSION: present"
		return
	fi
	log "runc $RUNC_VERSION: building"
	CGO_ENABLED=1 go_install "-X main.version=$RUNC_VERSION" -tags seccomp \
		"github.com/opencontainers/runc@v$RUNC_VERSION"
}

# crictl drives the CRI plugin as the kubelet does (crictl checkpoint
# --export writes the archive Kubernetes keeps); its version is set at link
# time, as cri-tools' own Makefile does.
install_crictl() {
	if have crictl "^crictl version ${CRICTL_VERSION//./\\.}$"; then
		log "crictl $CRICTL_VERSION: present"
		return
	fi
	log "crictl $CRICTL_VERSION: building"
	go_install "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
		"sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
}

# checkpointctl reads Kubernetes checkpoint archives (the tool their users
# inspect them with); its name and version are set at link time, as its
# Makefile does.
install_checkpointctl() {
	if have checkpointctl "^checkpointctl version ${CHECKPOINTCTL_VERSION//./\\.}$"; then
		log "checkpointctl $CHECKPOINTCTL_VERSION: present"
		return
	fi
	log "checkpointctl $CHECKPOINTCTL_VERSION: building"
	CGO_ENABLED=0 go_install "-X main.name=checkpointctl -X main.version=$CHECKPOINTCTL_VERSION" \
		"github.com/checkpoint-restore/checkpointctl@v$CHECKPOINTCTL_VERSION"
}

# CRIU is built from Debian's source tarball (forky's by default): Debian
# 12's criu 3.17 fails on newer kernels (vDSO), trixie's 4.1.1 on any inet
# socket from Linux 6.16 on. The tarball is fetched through apt with a
# private source list, so its hash is checked against the suite's signed
# Sources index, and the machine's own apt configuration is left untouched.
install_criu() {
	local criu="$CRIU_PREFIX/sbin/criu"
	if [ -x "$criu" ] && "$criu" --version 2>/dev/null | grep -q "^Version: ${CRIU_VERSION}$"; then
		log "criu $CRIU_VERSION: present"
		return
	fi
	log "criu $CRIU_VERSION: building from Debian $CRIU_SUITE's source"
	local apt="$CACHE/apt-$CRIU_SUITE"
	mkdir -p "$apt/lists/partial" "$CACHE/src"
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $CRIU_SUITE main" >"$apt/sources.list"
	local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt/lists")
	apt-get "${opts[@]}" update -q >/dev/null
	local tarball="criu_${CRIU_VERSION}.orig.tar.xz"
	if [ ! -f "$CACHE/src/$tarball" ]; then
		# The .dsc and debian.tar of some versions are missing from the
		# mirror; the orig tarball is all that is needed, so the error for
		# the others is tolerated and the tarball's hash is checked below.
		(cd "$CACHE/src" && apt-get "${opts[@]}" source --download-only "criu=${CRIU_VERSION}-1" >/dev/null 2>&1 || true)
		[ -f "$CACHE/src/$tarball" ] || die "could not download $tarball from Debian $CRIU_SUITE's sources"
	fi
	local sha index
	sha=$(sha256sum "$CACHE/src/$tarball" | cut -d' ' -f1)
	index=$(ls "$apt"/lists/*_"${CRIU_SUITE}"_main_source_Sources*)
	/usr/lib/apt/apt-helper cat-file "$index" | grep -E "^ $sha [0-9]+ $tarball$" >/dev/null ||
		die "$tarball: SHA256 $sha is not in $CRIU_SUITE's Sources index"
	local build; build=$(mktemp -d)
	tar -C "$build" -xf "$CACHE/src/$tarball"
	make -C "$build/criu-$CRIU_VERSION" -j"$(nproc)" criu >"$build/build.log" 2>&1 ||
		{ tail -20 "$build/build.log" >&2; die "criu $CRIU_VERSION build failed"; }
	install -D -m 0755 "$build/criu-$CRIU_VERSION/criu/criu" "$criu"
	rm -rf "$build"
}

# CNI plugins give CRI pods a network namespace of their own, as Kubernetes
# pods have: loopback (the CRI plugin always sets lo up with it), tap and
# static (an eth0 tap link with a fixed address inside the pod's namespace
# and nothing on the host: no bridge, veth, route, iptables rule or IPAM
# state to leak; dummy links would do too, but this host kernel lacks
# them). Kept out of /opt/cni/bin, which belongs to the machine's own CNI
# setup; the test harness points its CRI plugin here.
CNI_DIR=$PREFIX/libexec/precopy/cni
install_cni_plugins() {
	if [ "$(cat "$CNI_DIR/VERSION" 2>/dev/null)" = "$CNI_PLUGINS_VERSION" ] &&
		[ -x "$CNI_DIR/loopback" ] && [ -x "$CNI_DIR/tap" ] && [ -x "$CNI_DIR/static" ]; then
		log "CNI plugins $CNI_PLUGINS_VERSION: present"
		return
	fi
	log "CNI plugins $CNI_PLUGINS_VERSION: building loopback, tap, static"
	local m=github.com/containernetworking/plugins tmp; tmp=$(mktemp -d)
	CGO_ENABLED=0 GOBIN=$tmp GOFLAGS=-mod=mod go install \
		"$m/plugins/main/loopback@v$CNI_PLUGINS_VERSION" "$m/plugins/main/tap@v$CNI_PLUGINS_VERSION" \
		"$m/plugins/ipam/static@v$CNI_PLUGINS_VERSION" || { rm -rf "$tmp"; die "CNI plugins $CNI_PLUGINS_VERSION build failed"; }
	install -d -m 0755 "$CNI_DIR"
	install -m 0755 "$tmp"/* "$CNI_DIR/"
	echo "$CNI_PLUGINS_VERSION" >"$CNI_DIR/VERSION"
	rm -rf "$tmp"
}

# Pieces can be named to install only those, e.g. `hack/deps.sh criu`
# (with CRIU_PREFIX to try a CRIU beside the one in use).
pieces=("$@")
[ ${#pieces[@]} -gt 0 ] || pieces=(debian_packages containerd runc crictl checkpointctl cni_plugins criu)
for piece in "${pieces[@]}"; do
	declare -F "install_$piece" >/dev/null || die "unknown piece $piece (debian_packages containerd runc crictl checkpointctl cni_plugins criu)"
done
for piece in "${pieces[@]}"; do
	"install_$piece"
done
[ $# -eq 0 ] || exit 0
log "ready: $("$PREFIX/bin/containerd" --version | cut -d' ' -f3), runc $("$PREFIX/bin/runc" --version | head -1 | cut -d' ' -f3), criu $("$CRIU_PREFIX/sbin/criu" --version | head -1 | cut -d' ' -f2), crictl $CRICTL_VERSION, checkpointctl $CHECKPOINTCTL_VERSION, CNI plugins $CNI_PLUGINS_VERSION"
