package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// CRINamespace is the containerd namespace the CRI plugin keeps pods,
// containers and images in; it is not configurable.
const CRINamespace = "k8s.io"

// CRIOptions turn containerd's CRI plugin on in a private daemon, set up
// so that everything it writes stays in the daemon's directory: its
// root and state (under containerd's), CNI's config dir, CDI's spec dirs,
// and runc's state for handlers with runc's options. Pods run with host
// networking unless they ask for a network of their own
// (MemloadPodSpec.PodNetwork), which takes the CNI plugins `make deps`
// installs in CNIPluginDir; NRI stays off (its socket is machine-wide);
// the streaming server listens on a loopback port of the kernel's choice.
type CRIOptions struct {
	// Handlers are the runtime handlers pods may name; the first is the
	// default (an empty RuntimeHandler).
	Handlers []CRIHandler
}

// CRIHandler is a runtime handler:
// [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<Name>].
type CRIHandler struct {
	Name string
	// RuntimeType is the containerd runtime name, e.g.
	// io.containerd.runc.v2. The CRI plugin sends runc's checkpoint
	// options (leave running, CRIU work dir) only to that name.
	RuntimeType string
	// RuntimePath, when set, is the shim binary to run instead of the one
	// containerd finds on its PATH from RuntimeType.
	RuntimePath string
	// RuncOptions gives the handler an options table: runc's, with runc's
	// state in the daemon's directory. The CRI plugin decodes the table
	// as runc's options only for runtime type io.containerd.runc.v2; for
	// any other type it sends its generic options, which the runc-v2 task
	// service (precopy's too) cannot read. Without options runc keeps its
	// state in /run/containerd/runc/k8s.io/<container>.
	RuncOptions bool
	// Annotations are the key patterns (path.Match) of pod and container
	// annotations the handler passes to the runtime in the OCI spec:
	// precopy's settings need "io.precopy.*".
	Annotations []string
}

// CNIPluginDir is where `make deps` installs the CNI plugins pod networks
// need (hack/deps.sh): loopback, tap and static.
const CNIPluginDir = "/usr/local/libexec/precopy/cni"

// podNetworkConfig is the CNI network of pods with a network namespace of
// their own: lo, and an eth0 tap link with a fixed address, all inside the
// pod's namespace; nothing on the host (no bridge, veth, route, iptables
// rule or IPAM state) that could outlive a test. The tap is owned by root
// (owner and group set), which the plugin makes over netlink rather than
// by exec'ing ip. One address for every
// pod is fine: each has its own namespace and none talks to another. The
// CRI plugin wants an IP on eth0, which is why lo alone will not do.
const podNetworkConfig = `{
  "cniVersion": "1.0.0",
  "name": "precopy-test",
  "plugins": [
    {"type": "tap", "owner": 0, "group": 0, "ipam": {"type": "static", "addresses": [{"address": "10.88.0.2/24"}]}}
  ]
}
`

// CanMakePodNetwork says why pods cannot have podNetworkConfig's network
// here, if they cannot: the CNI plugins are missing (make deps), or the
// kernel has no tap links (tried in a throwaway network namespace).
func CanMakePodNetwork() error {
	for _, p := range []string{"loopback", "tap", "static"} {
		if _, err := os.Stat(filepath.Join(CNIPluginDir, p)); err != nil {
			return fmt.Errorf("CNI plugin %s: %w (make deps installs it)", p, err)
		}
	}
	out, err := exec.Command("unshare", "--net", "ip", "tuntap", "add", "probe0", "mode", "tap").CombinedOutput()
	if err != nil {
		return fmt.Errorf("this kernel cannot make tap links (ip tuntap add: %v: %s)", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeCNIConfig puts podNetworkConfig in the daemon's CNI config dir,
// which the CRI plugin reads at start.
func (d *Daemon) writeCNIConfig() error {
	if d.cri == nil {
		return nil
	}
	dir := filepath.Join(d.Dir, "cni", "net.d")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10-precopy-test.conflist"), []byte(podNetworkConfig), 0o600); err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	return nil
}

// criPlugins are the plugins that make up containerd's CRI support.
var criPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.runtime",
	"io.containerd.cri.v1.images",
}

// pluginsToDisable is disabledPlugins, less the CRI plugins when the
// daemon serves CRI.
func (d *Daemon) pluginsToDisable() []string {
	if d.cri == nil {
		return disabledPlugins
	}
	return slices.DeleteFunc(slices.Clone(disabledPlugins), func(p string) bool {
		return slices.Contains(criPlugins, p)
	})
}

// criConfig is the config.toml section for the CRI plugins, empty when
// the daemon does not serve CRI.
func (d *Daemon) criConfig() string {
	if d.cri == nil {
		return ""
	}
	var b strings.Builder
	defaultHandler := ""
	if len(d.cri.Handlers) > 0 {
		defaultHandler = d.cri.Handlers[0].Name
	}
	fmt.Fprintf(&b, `
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  enable_criu = true
  # Pods ask for an oom_score_adj below the test's own (the sandbox's is
  # -998), which needs CAP_SYS_RESOURCE that these machines may not give.
  restrict_oom_score_adj = true
  cdi_spec_dirs = [%q]
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%q]
    conf_dir = %q
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = %q
`, PauseImage, filepath.Join(d.Dir, "cdi"), CNIPluginDir, filepath.Join(d.Dir, "cni", "net.d"), defaultHandler)
	for _, h := range d.cri.Handlers {
		table := fmt.Sprintf(`plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%q`, h.Name)
		fmt.Fprintf(&b, "\n[%s]\n  runtime_type = %q\n", table, h.RuntimeType)
		if h.RuntimePath != "" {
			fmt.Fprintf(&b, "  runtime_path = %q\n", h.RuntimePath)
		}
		if len(h.Annotations) > 0 {
			list := tomlStrings(h.Annotations)
			fmt.Fprintf(&b, "  pod_annotations = %s\n  container_annotations = %s\n", list, list)
		}
		if h.RuncOptions {
			fmt.Fprintf(&b, "[%s.options]\n  Root = %q\n", table, d.CRIRuncRoot())
		}
	}
	return b.String()
}

// CRIRuncRoot is runc's state dir for handlers with RuncOptions.
func (d *Daemon) CRIRuncRoot() string { return filepath.Join(d.Dir, "runc") }

// CRICgroupParent is the cgroup parent the tests' pods must name: the
// daemon's namespace, whose cgroups Close removes.
func (d *Daemon) CRICgroupParent() string { return "/" + d.Namespace }

// CRIRootfsPath is where the shim mounts CRI container id's root
// filesystem, in containerd's state dir.
func (d *Daemon) CRIRootfsPath(id string) string {
	return filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", CRINamespace, id, "rootfs")
}

func tomlStrings(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
