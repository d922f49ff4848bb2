package app

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/precopy/precopy/cmd/precopyctl/internal/checkpoints"
)

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "Restore a container from one of its checkpoints, in its place",
		ArgsUsage: "CONTAINER [CHECKPOINT]",
		Description: `Restores CONTAINER from CHECKPOINT (a checkpoint image's name), or with
--latest from its newest checkpoint (the images labelled
io.precopy.checkpoint.container=CONTAINER, as precopyctl checkpoint makes
them). A stopped task of CONTAINER is deleted, then the container and its
snapshot; the container is created again from the checkpoint (image, spec,
runtime, snapshotter; the writable layer if the checkpoint has one) with the
same ID and labels, and its task restored and started, as 'ctr containers
restore --live [--rw]' does. A container that no longer exists is created. A
live task is left alone: kill it first.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "latest", Usage: "Restore the container's newest checkpoint"},
			&cli.StringFlag{Name: "log", Usage: "File the restored task's output is appended to (default: discarded)"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			a, err := args(cmd, 1, 2)
			if err != nil {
				return err
			}
			latest := cmd.Bool("latest")
			if latest == (len(a) == 2) {
				return usagef("restore takes either a CHECKPOINT or --latest")
			}
			client, ctx, cancel, err := newClient(ctx, cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer client.Close()
			var c checkpoints.Checkpoint
			if latest {
				c, err = checkpoints.Latest(ctx, client, a[0])
			} else {
				c, err = checkpoints.Get(ctx, client, a[1])
			}
			if err != nil {
				return err
			}
			start := time.Now()
			task, err := checkpoints.Restore(ctx, client, a[0], c, restoredIO(cmd.String("log")))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.Root().Writer, "restored %s image=%s pid=%d took=%dms\n", a[0], c.Name, task.Pid(), time.Since(start).Milliseconds())
			return err
		},
	}
}
