//go:build linux

package shim

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"
)

// criuConfigPath is the CRIU configuration precopy hands CRIU.
const criuConfigPath = "/run/precopy/criu.conf"

// criuOptions are the CRIU options precopy adds for every CRIU that runc
// starts from this shim, one config-file line each; empty until
// useCRIUConfig ran, and when nothing applies.
var criuOptions []string

// useCRIUConfig sets, once per shim process, the CRIU options that make
// pre-copy's dumps cheaper without weakening them, where this CRIU and
// kernel support them:
//
//   - network-lock nftables: lock the container's network with nftables
//     instead of iptables. Both block its traffic for the frozen window
//     (the same protection); iptables exec's iptables-restore twice inside
//     that window, nftables is a library call (measured by hand before
//     this code, ../shared/notes/facts.md: ≈ 56 ms less natively and
//     ≈ 420 ms less under TCG for the final dump). The method is recorded
//     in the image (inventory.img), so restore unlocks with the same one.
//   - pre-dump-mode read: pre-dump rounds copy memory with
//     process_vm_readv after thawing the task, instead of vmsplice'ing it
//     into pipes while it is frozen (the default, splice), which also pins
//     every page it copies until the round ends. Same pages, same images;
//     read mode freezes the container for less (facts.md: 71 vs 106 ms for
//     a 256 MiB first round in the VM). It only applies to pre-dumps.
//
// It goes through CRIU_CONFIG_FILE in the environment runc passes to CRIU,
// not runc's own CRIU config file: CRIU 4.1.1 crashes re-parsing a
// network-lock line from the file runc hands it over RPC (fixed upstream
// after 4.1.1), and runc does not expose the pre-dump mode. An operator's
// own CRIU_CONFIG_FILE is left alone. The file is checked by a CRIU that
// parses it before any dump relies on it: a line CRIU rejects would fail
// every dump.
var useCRIUConfig = sync.OnceFunc(func() {
	logger := log.L.WithField("criu_config", criuConfigPath)
	if os.Getenv("CRIU_CONFIG_FILE") != "" {
		logger.Info("precopy: CRIU_CONFIG_FILE set by the operator; CRIU options left as configured")
		return
	}
	var lines []string
	probe := "network_lock_nftables"
	if err := criuCheck("", "network_lock_nftables"); err != nil {
		logger.WithError(err).Info("precopy: CRIU cannot lock the network with nftables here; it keeps iptables")
		probe = "mem_dirty_track"
	} else {
		lines = append(lines, "network-lock nftables")
	}
	if ok, _ := softDirty(); ok {
		lines = append(lines, "pre-dump-mode read")
	}
	if len(lines) == 0 {
		return
	}
	if err := writeCRIUConfig(criuConfigPath, lines); err != nil {
		logger.WithError(err).Warn("precopy: cannot write CRIU config; CRIU keeps its defaults")
		return
	}
	if err := criuCheck(criuConfigPath, probe); err != nil {
		logger.WithError(err).WithField("options", lines).Warn("precopy: CRIU rejects precopy's config; CRIU keeps its defaults")
		return
	}
	os.Setenv("CRIU_CONFIG_FILE", criuConfigPath)
	criuOptions = lines
	logger.WithField("options", lines).Info("precopy: CRIU options set")
})

// criuCheck runs `criu check --feature feature`, with config as CRIU's
// config file if set: it fails when the feature is missing or CRIU cannot
// parse the file.
func criuCheck(config, feature string) error {
	cmd := exec.Command("criu", "check", "--feature", feature)
	if config != "" {
		cmd.Env = append(os.Environ(), "CRIU_CONFIG_FILE="+config)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("criu check --feature %s: %w: %s", feature, err, lastLine(out))
	}
	return nil
}

func writeCRIUConfig(path string, lines []string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Write and rename: shims start concurrently, and CRIU must never read
	// a half-written file.
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
