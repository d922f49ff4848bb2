package app

import (
	"context"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/urfave/cli/v3"

	"github.com/precopy/precopy/cmd/precopyctl/internal/report"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:      "report",
		Usage:     "Show how a checkpoint was made: rounds, pages, predicted and measured freeze, early thaw, why pre-copy stopped or was skipped",
		ArgsUsage: "CHECKPOINT",
		Description: `CHECKPOINT is one of:
   - a checkpoint image in containerd (ctr c checkpoint's REF, or precopyctl's
     checkpoint/<container>:<time>): the report is precopy-report.json in its
     CRIU tar;
   - a Kubernetes checkpoint archive (crictl checkpoint --export, the kubelet's
     checkpoint API), or any tar holding the CRIU images: checkpoint/ in it;
   - a directory holding the CRIU images (ctr's --image-path, nerdctl's
     checkpoint dir, an extracted archive).
A path that exists is read as a file or directory; anything else is looked
up in containerd.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "Print the report as precopy wrote it (JSON), for scripts"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			a, err := args(cmd, 1, 1)
			if err != nil {
				return err
			}
			var done func()
			defer func() {
				if done != nil {
					done()
				}
			}()
			connect := func(ctx context.Context) (*containerd.Client, context.Context, error) {
				client, ctx, cancel, err := newClient(ctx, cmd)
				done = cancel
				return client, ctx, err
			}
			r, src, err := report.Read(ctx, a[0], connect)
			if err != nil {
				return err
			}
			if cmd.Bool("json") {
				return report.WriteJSON(cmd.Root().Writer, r)
			}
			return report.Write(cmd.Root().Writer, src, r)
		},
	}
}
