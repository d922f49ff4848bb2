package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/precopy/precopy/integration/workload"
)

// request is a subcommand that signals the workload and waits for the
// sequence number that acknowledges it to advance.
type request struct {
	name   string
	signal syscall.Signal
	seq    func(workload.Status) uint64
}

var (
	queryRequest = request{"query", syscall.SIGUSR1, func(s workload.Status) uint64 { return s.QuerySeq }}
	resetRequest = request{"reset-gap", syscall.SIGUSR2, func(s workload.Status) uint64 { return s.ResetSeq }}
)

// runClient sends req to a running memload and prints the status that
// answers it.
func runClient(req request, args []string) error {
	fs := flag.NewFlagSet("memload "+req.name, flag.ContinueOnError)
	statusPath := fs.String("status", defaultStatusPath, "status file of the memload to ask")
	pid := fs.Int("pid", 0, "pid of the memload to ask (0: the pid in its status file, which is 1 in a container)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for memload to be ready and answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	// Read the sequence number before signalling, so that the answer is
	// recognisable. The file appears once memload's memory is filled.
	before, err := workload.WaitReadable(ctx, *statusPath)
	if err != nil {
		return fmt.Errorf("%s: memload not ready after %s: %w", req.name, *timeout, err)
	}
	target := *pid
	if target == 0 {
		target = before.PID
	}
	if err := syscall.Kill(target, req.signal); err != nil {
		return fmt.Errorf("%s: signal memload pid %d: %w", req.name, target, err)
	}
	after, err := workload.WaitStatus(ctx, *statusPath, func(s workload.Status) bool {
		return req.seq(s) > req.seq(before)
	})
	if err != nil {
		return fmt.Errorf("%s: no answer from memload pid %d within %s: %w", req.name, target, *timeout, err)
	}
	out, err := json.Marshal(after)
	if err != nil {
		return fmt.Errorf("%s: encode status: %w", req.name, err)
	}
	_, err = fmt.Fprintf(os.Stdout, "%s\n", out)
	return err
}
