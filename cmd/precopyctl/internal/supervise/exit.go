// Package supervise checkpoints a container periodically and, when asked,
// restores its newest checkpoint in its place when its task dies
// abnormally (precopyctl checkpoint).
package supervise

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is how a task ended, as containerd reports it.
type Exit struct {
	Code uint32
	At   time.Time
}

// signalBase: a task killed by signal N has exit status 128+N, as shells
// report it (the runc shim's reaper does so).
const signalBase = 128

// Signal is the signal that killed the task, if a signal did.
func (e Exit) Signal() (unix.Signal, bool) {
	if e.Code <= signalBase || e.Code > signalBase+64 {
		return 0, false
	}
	return unix.Signal(e.Code - signalBase), true
}

// stopSignals ask a program to stop: SIGTERM is what `ctr task kill`
// sends by default, and `docker stop` and the kubelet before a SIGKILL;
// SIGINT is ^C. systemd's Restart=on-abnormal counts deaths by these
// four as clean exits too.
var stopSignals = []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE}

// Clean says whether the task ended as asked or of its own will: exit
// status 0, or a signal that asks a program to stop. Anything else is
// abnormal: a non-zero status, a crash (SIGSEGV, SIGABRT, SIGBUS, ...), a
// SIGKILL (the OOM killer's, or anyone's), or the shim's unknown status
// (255) when it lost the task.
func (e Exit) Clean() bool {
	if e.Code == 0 {
		return true
	}
	sig, ok := e.Signal()
	if !ok {
		return false
	}
	for _, s := range stopSignals {
		if sig == s {
			return true
		}
	}
	return false
}

func (e Exit) String() string {
	if sig, ok := e.Signal(); ok {
		return fmt.Sprintf("killed by %s (exit status %d)", unix.SignalName(sig), e.Code)
	}
	return fmt.Sprintf("exit status %d", e.Code)
}
