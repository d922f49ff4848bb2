// Package app is precopyctl's command line: containerd's conventions
// (ctr's global flags, its client set-up, urfave/cli as ctr uses it), the
// subcommands, and the exit codes.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	"github.com/precopy/precopy/cmd/precopyctl/internal/supervise"
)

// The exit codes, as the help text documents them.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitUsage    = 2
	ExitNotFound = 3
	ExitDied     = 4
)

const exitCodesHelp = `EXIT CODES:
   0  done; for checkpoint: stopped by SIGINT or SIGTERM, or the task exited
      cleanly (status 0, or killed by SIGTERM, SIGINT, SIGHUP or SIGPIPE) or was
      deleted by someone else, and was left alone
   1  failed (containerd, the runtime or the restore said why)
   2  bad usage: an unknown flag, a missing or extra argument, a bad value
   3  not found: the container, the checkpoint image, archive or dir, a report
      in it (a checkpoint precopy's shim did not make), or a checkpoint to restore
   4  checkpoint: the task died abnormally and was not restored (no
      --restore-on-exit, or no checkpoint taken yet)`

// usageError is a command line the commands cannot run.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// Main runs precopyctl with args (args[0] is the program) and returns its
// exit code; errors go to stderr, prefixed with the program's name.
func Main(args []string, stdout, stderr io.Writer) int {
	// The first SIGINT or SIGTERM stops a command (a periodic checkpoint
	// finishes the checkpoint in progress); a second one aborts it.
	stop, stopped := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopped()
	abort, aborted := context.WithCancel(context.Background())
	defer aborted()
	go func() {
		<-stop.Done()
		stopped() // the next signal kills, as by default, unless abort's handler takes it
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		aborted()
	}()
	root := New(stdout, stderr, abort)
	err := root.Run(stop, args)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", root.Name, err)
	return ExitCode(err)
}

// ExitCode is the exit code for err (see exitCodesHelp).
func ExitCode(err error) int {
	var usage usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &usage):
		return ExitUsage
	case errors.Is(err, supervise.ErrDied):
		return ExitDied
	case errdefs.IsNotFound(err):
		return ExitNotFound
	}
	return ExitFailed
}

// New is precopyctl's command tree. Commands run in the context Run is
// given (ended by the first signal); abort ends at the second, for the
// one command that outlives the first (checkpoint).
func New(stdout, stderr io.Writer, abort context.Context) *cli.Command {
	return &cli.Command{
		Name:    "precopyctl",
		Version: version.Version,
		Usage:   "checkpoints made by precopy's containerd shim: reports, periodic checkpoints, restores",
		Description: `precopyctl works with containerd the way ctr does (same --address and
--namespace, same environment variables) on containers whose runtime is
precopy's shim (io.containerd.precopy.v1, or installed as runc-v2). Its
checkpoints are ordinary containerd checkpoint images, which ctr, nerdctl
and containerd's client restore too.

` + exitCodesHelp,
		Writer:                    stdout,
		ErrWriter:                 stderr,
		DisableSliceFlagSeparator: true,
		HideHelpCommand:           true,
		// Errors are printed, and turned into exit codes, by Main.
		ExitErrHandler: func(context.Context, *cli.Command, error) {},
		OnUsageError:   onUsageError,
		Action: func(_ context.Context, cmd *cli.Command) error {
			if cmd.Args().Present() {
				return usagef("no command %q; see %s --help", cmd.Args().First(), cmd.Name)
			}
			return cli.ShowRootCommandHelp(cmd)
		},
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "address",
				Aliases: []string{"a"},
				Usage:   "Address for containerd's GRPC server",
				Value:   defaults.DefaultAddress,
				Sources: cli.EnvVars("CONTAINERD_ADDRESS"),
			},
			&cli.StringFlag{
				Name:    "namespace",
				Aliases: []string{"n"},
				Usage:   "Namespace to use with commands",
				Value:   namespaces.Default,
				Sources: cli.EnvVars(namespaces.NamespaceEnvVar),
			},
			&cli.DurationFlag{
				Name:  "timeout",
				Usage: "Total timeout for report and restore (not for checkpoint, which runs until stopped)",
			},
			&cli.DurationFlag{
				Name:  "connect-timeout",
				Usage: "Timeout for connecting to containerd",
			},
		},
		Commands: withUsageErrors(
			reportCommand(),
			checkpointCommand(abort),
			restoreCommand(),
		),
	}
}

// onUsageError makes a command line cli cannot parse (an unknown flag, a
// required one missing, a bad value) a usageError: exit code 2, no help
// dumped after it.
func onUsageError(_ context.Context, _ *cli.Command, err error, _ bool) error {
	return usageError{err}
}

// withUsageErrors sets onUsageError on subcommands: cli asks the command
// being run, not the root.
func withUsageErrors(cmds ...*cli.Command) []*cli.Command {
	for _, c := range cmds {
		c.OnUsageError = onUsageError
	}
	return cmds
}

// newClient connects to containerd as ctr does (its flags, its
// deprecation warnings, its namespace and --timeout in the context).
var newClient = commands.NewClient

// args checks cmd's positional arguments: at least min, at most max.
func args(cmd *cli.Command, min, max int) ([]string, error) {
	a := cmd.Args().Slice()
	if len(a) < min || len(a) > max {
		want := "one argument"
		if max > min {
			want = fmt.Sprintf("%d or %d arguments", min, max)
		}
		return nil, usagef("%s takes %s (%s), got %d; see %s %s --help", cmd.Name, want, cmd.ArgsUsage, len(a), cmd.Root().Name, cmd.Name)
	}
	return a, nil
}
