package app

import (
	"context"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/urfave/cli/v3"

	"github.com/precopy/precopy/cmd/precopyctl/internal/supervise"
)

func checkpointCommand(abort context.Context) *cli.Command {
	return &cli.Command{
		Name:      "checkpoint",
		Usage:     "Checkpoint a container periodically, keeping the newest, and restore it when its task dies",
		ArgsUsage: "CONTAINER",
		Description: `Checkpoints CONTAINER every --every, leaving it running, as
'ctr containers checkpoint --task [--rw]' does, into images named
<prefix>/<container>:<UTC time> (checkpoint/c1:20261207T101500.123Z), labelled
io.precopy.checkpoint.container=<container> and io.precopy.checkpoint.taken=<time>;
<prefix>/<container>:latest always names the newest. Checkpoints beyond the
newest --keep are removed. Each event is one line on stdout:

   <time> checkpoint <container> image=<name> freeze=<ms> pause=<ms> size=<bytes> pre_copied=... rounds=...
   <time> removed <container> image=<name>
   <time> died <container> status="killed by SIGKILL (exit status 137)" at=<time>
   <time> restored <container> image=<name> recovery=<ms> lost=<ms>

freeze is CRIU's final freeze from precopy's report; pause is the client's
pause, Pause to Resume. A failed checkpoint is reported and retried at the next
period.

When the task exits cleanly (status 0, or killed by SIGTERM, SIGINT, SIGHUP or
SIGPIPE, the signals that ask a program to stop: 'ctr task kill' sends SIGTERM)
precopyctl leaves it alone and exits. Any other death (a non-zero status, a
crash, SIGKILL, the OOM killer) is abnormal: with --restore-on-exit, precopyctl
waits --grace, and unless someone deleted the task meanwhile ('ctr task kill
-s SIGKILL' then 'ctr task delete', or 'ctr task delete -f': the user wants it
gone; containerd publishes no event for a kill request itself), it restores
the newest checkpoint in the container's place (same ID and labels; the
writable layer too if the checkpoint has it) and goes on checkpointing.
recovery is the time from the death to the restored task running; lost is
how much older than the death the restored memory is.

The first SIGINT or SIGTERM stops precopyctl after the checkpoint in
progress, leaving the container running; a second one aborts that checkpoint
(the task is resumed).`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "every", Usage: "Time between the starts of two checkpoints (required)", Required: true},
			&cli.IntFlag{Name: "keep", Usage: "How many checkpoints to keep; older ones are removed", Value: 3},
			&cli.BoolFlag{Name: "rw", Usage: "Include the writable layer in each checkpoint (ctr's --rw)"},
			&cli.BoolFlag{Name: "restore-on-exit", Usage: "Restore the newest checkpoint when the task dies abnormally"},
			&cli.DurationFlag{Name: "grace", Usage: "With --restore-on-exit: time a user has to delete a killed task before it is restored", Value: time.Second},
			&cli.StringFlag{Name: "prefix", Usage: "Start of the checkpoint images' names", Value: "checkpoint"},
			&cli.StringFlag{Name: "log", Usage: "File the output of restored tasks is appended to (default: discarded)"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			a, err := args(cmd, 1, 1)
			if err != nil {
				return err
			}
			cfg := supervise.Config{
				ID: a[0], Every: cmd.Duration("every"), Keep: int(cmd.Int("keep")), RW: cmd.Bool("rw"),
				Prefix: cmd.String("prefix"), RestoreOnExit: cmd.Bool("restore-on-exit"), Grace: cmd.Duration("grace"),
				RestoredIO: restoredIO(cmd.String("log")), Out: cmd.Root().Writer,
			}
			switch {
			case cfg.Every <= 0:
				return usagef("--every must be positive, got %s", cfg.Every)
			case cfg.Keep < 1:
				return usagef("--keep must be at least 1 (the checkpoint to restore), got %d", cfg.Keep)
			case cfg.Grace < 0:
				return usagef("--grace must not be negative, got %s", cfg.Grace)
			case cfg.Prefix == "":
				return usagef("--prefix must not be empty")
			case cmd.Duration("timeout") > 0:
				return usagef("--timeout does not apply to checkpoint, which runs until stopped")
			}
			client, actx, cancel, err := newClient(abort, cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer client.Close()
			return supervise.Run(ctx, actx, client, cfg)
		},
	}
}

// restoredIO is the stdio of a restored task: appended to path, or none.
// (CRIU gives the restored process these in place of the pipes it had.)
func restoredIO(path string) cio.Creator {
	if path == "" {
		return cio.NullIO
	}
	return cio.LogFile(path)
}
