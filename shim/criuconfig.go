//go:build linux

package shim

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
)

// criuConfigPath is the CRIU configuration precopy hands CRIU.
const criuConfigPath = "/run/precopy/criu.conf"

// useCRIUConfig makes every CRIU that runc starts from this shim lock the
// container's network with nftables instead of iptables, where CRIU and the
// kernel support it. Both block the container's traffic for the frozen
// window (the same protection); iptables exec's iptables-restore twice
// inside that window, nftables is a library call (measured by hand before
// this code, ../shared/notes/facts.md: ≈ 56 ms less natively and ≈ 420 ms
// less under TCG for the final dump; not yet re-measured by the bench). The method is recorded in
// the image (inventory.img), so restore unlocks with the same one.
//
// It goes through CRIU_CONFIG_FILE in the environment runc passes to CRIU,
// not runc's own CRIU config file: CRIU 4.1.1 crashes re-parsing a
// network-lock line from the file runc hands it over RPC (fixed upstream
// after 4.1.1). An operator's own CRIU_CONFIG_FILE is left alone. It runs
// once per shim process, before the first dump.
var useCRIUConfig = sync.OnceFunc(func() {
	logger := log.L.WithField("criu_config", criuConfigPath)
	if os.Getenv("CRIU_CONFIG_FILE") != "" {
		logger.Info("precopy: CRIU_CONFIG_FILE set by the operator; network lock left as configured")
		return
	}
	if err := exec.Command("criu", "check", "--feature", "network_lock_nftables").Run(); err != nil {
		logger.WithError(err).Info("precopy: CRIU cannot lock the network with nftables here; it keeps iptables")
		return
	}
	if err := writeCRIUConfig(criuConfigPath); err != nil {
		logger.WithError(err).Warn("precopy: cannot write CRIU config; CRIU keeps its iptables network lock")
		return
	}
	os.Setenv("CRIU_CONFIG_FILE", criuConfigPath)
	logger.Info("precopy: CRIU locks the network with nftables")
})

func writeCRIUConfig(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Write and rename: shims start concurrently, and CRIU must never read
	// a half-written file.
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte("network-lock nftables\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
