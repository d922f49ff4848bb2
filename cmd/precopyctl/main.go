// Command precopyctl works with the checkpoints precopy's containerd shim
// makes: it prints a checkpoint's report, checkpoints a container
// periodically (restoring it when its task dies), and restores a
// container from its checkpoints. It talks to containerd as ctr does.
package main

import (
	"os"

	"github.com/precopy/precopy/cmd/precopyctl/internal/app"
)

func main() {
	os.Exit(app.Main(os.Args, os.Stdout, os.Stderr))
}
