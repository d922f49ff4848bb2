//go:build linux

package shim

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/log"
)

// criuConfigName names the CRIU configuration precopy hands CRIU through
// CRIU_CONFIG_FILE: precopy-criu-env.<options>.conf in the shim's working
// directory, which containerd makes the bundle of the container it started
// the shim for (under its state dir: a private containerd's shims never
// share it) and removes with that container, the last of its shim's (a
// pod's sandbox).
const criuConfigName = "precopy-criu-env.conf"

// criuConfig sets, once per shim process, the CRIU options that make
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
//     Only for containers with a network namespace of their own: in the
//     host's, CRIU locks nothing with iptables unless the container has
//     TCP connections, while with nftables it creates (and then deletes) a
//     table of its own in the host's ruleset, inside the frozen window.
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
// after 4.1.1; 4.2.1 parses it), and runc does not expose the pre-dump
// mode. An operator's
// own CRIU_CONFIG_FILE is left alone. The file is checked by a CRIU that
// parses it before any dump relies on it: a line CRIU rejects would fail
// every dump.
//
// The environment is the shim process's, so the first container decides
// for all it serves: one container under ctr, a pod under the CRI plugin,
// whose containers share the pod's network namespace.
type criuConfig struct {
	once sync.Once
	// options are the lines of the file in use: empty until init ran,
	// and when nothing applies.
	options []string
}

// use sets the options up on first use, for a container that has a
// network namespace of its own or not (ownNetns), and returns them.
func (cc *criuConfig) use(ownNetns bool) []string {
	cc.once.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			log.L.WithError(err).Warn("precopy: no working directory for the CRIU config; CRIU keeps its defaults")
			return
		}
		cc.options = setUpCRIUConfig(filepath.Join(dir, criuConfigName), ownNetns)
	})
	return cc.options
}

func setUpCRIUConfig(path string, ownNetns bool) []string {
	logger := log.L.WithField("criu_config", path)
	if os.Getenv("CRIU_CONFIG_FILE") != "" {
		logger.Info("precopy: CRIU_CONFIG_FILE set by the operator; CRIU options left as configured")
		return nil
	}
	var lines []string
	probe := "mem_dirty_track"
	if !ownNetns {
		logger.Info("precopy: the container uses the host's network namespace; CRIU keeps its network lock method (iptables), which locks nothing there but TCP connections")
	} else if err := criuCheck("", "network_lock_nftables"); err != nil {
		logger.WithError(err).Info("precopy: CRIU cannot lock the network with nftables here; it keeps iptables")
	} else {
		lines = append(lines, "network-lock nftables")
		probe = "network_lock_nftables"
	}
	if ok, _ := softDirty(); ok {
		lines = append(lines, "pre-dump-mode read")
	}
	if len(lines) == 0 {
		return nil
	}
	// Named by its lines, to say what it holds.
	path = fmt.Sprintf("%s.%s", strings.TrimSuffix(path, ".conf"), configName(lines))
	if err := writeCRIUConfig(path, lines); err != nil {
		logger.WithError(err).Warn("precopy: cannot write CRIU config; CRIU keeps its defaults")
		return nil
	}
	if err := criuCheck(path, probe); err != nil {
		logger.WithError(err).WithField("options", lines).Warn("precopy: CRIU rejects precopy's config; CRIU keeps its defaults")
		return nil
	}
	os.Setenv("CRIU_CONFIG_FILE", path)
	logger.WithFields(log.Fields{"options": lines, "file": path}).Info("precopy: CRIU options set")
	return lines
}

// configName names a config file by its options: "nftables-read.conf".
func configName(lines []string) string {
	var parts []string
	for _, l := range lines {
		f := strings.Fields(l)
		parts = append(parts, f[len(f)-1])
	}
	return strings.Join(parts, "-") + ".conf"
}

// criuCheck runs `criu check --feature feature`, with config as CRIU's
// config file if set: it fails when the feature is missing or CRIU cannot
// parse the file.
func criuCheck(config, feature string) error {
	cmd := exec.Command("criu", "check", "--feature", feature)
	if config != "" {
		cmd.Env = append(os.Environ(), "CRIU_CONFIG_FILE="+config)
	}
	if out, err := runReaped(cmd); err != nil {
		return fmt.Errorf("criu check --feature %s: %w: %s", feature, err, lastLine(out))
	}
	return nil
}

// runReaped runs cmd and returns its combined output, and an error if it
// did not exit 0. The shim is a subreaper whose SIGCHLD handler
// (containerd's pkg/sys/reaper, installed by the runc-v2 task service)
// reaps every child with wait4(-1): exec.Cmd's own Wait can find the child
// gone (ECHILD) although it succeeded. So, as go-runc's monitor does in
// the runc-v2 shim, the exit status comes from the reaper.
func runReaped(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := reaper.Default.Start(cmd)
	if err != nil {
		return nil, err
	}
	status, err := reaper.Default.Wait(cmd, ec)
	if err != nil {
		return out.Bytes(), err
	}
	if status != 0 {
		return out.Bytes(), fmt.Errorf("exit status %d", status)
	}
	return out.Bytes(), nil
}

func writeCRIUConfig(path string, lines []string) error {
	// Write and rename: CRIU must never read a half-written file (a
	// container's own config is rewritten after its restore).
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
