package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// noBreakpointsEnv makes CRIU stop a parasite-infected task at its
// sigreturn by stepping through syscalls instead of with a hardware
// breakpoint (criu/include/fault-injection.h: FI_NO_BREAKPOINTS = 130).
const noBreakpointsEnv = "CRIU_FAULT=130"

// CRIUEnv returns what CRIU needs in its environment (runc passes
// containerd's environment down to it) to dump on this machine, and a note
// saying why, if anything.
//
// Some hypervisors do not deliver hardware breakpoints to guests. CRIU
// plants one (a debug register) where its parasite returns, and waits for
// it forever: every dump hangs at "Daemon exited trapping" with CRIU in
// wait4. This machine's kernel (6.18.44-fc) is one; the soft-dirty VM
// (qemu TCG) is not. The probe dumps a sleeping process, first as CRIU is,
// then without breakpoints.
func CRIUEnv(ctx context.Context) (env []string, note string, err error) {
	if probeDump(ctx, nil) == nil {
		return nil, "", nil
	}
	if err := probeDump(ctx, []string{noBreakpointsEnv}); err != nil {
		return nil, "", fmt.Errorf("criu cannot dump a sleeping process on this machine, with or without hardware breakpoints: %w", err)
	}
	return []string{noBreakpointsEnv}, "hardware breakpoints do not reach this machine's processes (CRIU dump hangs at parasite cure): CRIU runs with " + noBreakpointsEnv, nil
}

// probeDump has CRIU dump (and so kill) a sleep process started for it,
// giving up after a few seconds.
func probeDump(ctx context.Context, env []string) error {
	dir, err := os.MkdirTemp("", "precopy-criu-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sleeper := exec.Command("sleep", "60")
	// Its own session, so CRIU needs no --shell-job.
	sleeper.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleeper.Start(); err != nil {
		return err
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dump := exec.CommandContext(ctx, "criu", "dump", "-t", fmt.Sprint(sleeper.Process.Pid), "-D", dir, "-o", "dump.log")
	dump.Env = append(os.Environ(), env...)
	out, err := dump.CombinedOutput()
	if ctx.Err() != nil {
		return errors.New("criu dump hung")
	}
	if err != nil {
		b, _ := os.ReadFile(dir + "/dump.log")
		return fmt.Errorf("criu dump: %w: %s%s", err, out, lastLine(string(b), err))
	}
	return nil
}
