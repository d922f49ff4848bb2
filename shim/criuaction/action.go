//go:build linux

package criuaction

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/precopy/precopy/precopy"
)

// The environment CRIU runs an action script with.
const (
	envAction   = "CRTOOLS_SCRIPT_ACTION"
	envInitPID  = "CRTOOLS_INIT_PID"
	envImageDir = "CRTOOLS_IMAGE_DIR"
)

// actionSetupNamespaces is the action after the restored root task made
// its namespaces and before tasks restore their sockets.
const actionSetupNamespaces = "setup-namespaces"

// Requested reports whether this process was started by CRIU as an action
// script: then Main is all it should run.
func Requested() bool { return os.Getenv(envAction) != "" }

// Main does what the action in the environment asks and returns the exit
// code. Only setup-namespaces does anything: it puts the loopback the
// image's report recorded back into the restored task's network
// namespace. A failure fails CRIU's restore, with the reason on stderr
// (CRIU's log): the container would not be as it was.
func Main() int {
	if err := run(os.Getenv(envAction), os.Getenv(envImageDir), os.Getenv(envInitPID)); err != nil {
		fmt.Fprintf(os.Stderr, "precopy action script: %v\n", err)
		return 1
	}
	return 0
}

func run(action, imageDir, pid string) error {
	if action != actionSetupNamespaces {
		return nil
	}
	if imageDir == "" || pid == "" {
		return fmt.Errorf("%s: CRIU gave no %s or %s", action, envImageDir, envInitPID)
	}
	lo, err := RecordedLoopback(imageDir)
	if err != nil || lo == nil {
		return err
	}
	if err := ApplyLoopback(*lo, "/proc/"+pid+"/ns/net"); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	fmt.Fprintf(os.Stderr, "precopy action script: %s: lo %s in the network namespace of %s\n", action, lo, pid)
	return nil
}

// RecordedLoopback is lo as the report of the image in dir recorded it
// before the dump; nil when the image has no report (another runtime took
// it) or the report no loopback (the host's network namespace, or lo
// could not be read).
func RecordedLoopback(dir string) (*precopy.Loopback, error) {
	r, err := precopy.ReadReport(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("loopback record: %w", err)
	case r.Network == nil:
		return nil, nil
	}
	return r.Network.Loopback, nil
}
