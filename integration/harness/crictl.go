package harness

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// crictlTimeout bounds each CRI call crictl makes. crictl's default (2 s)
// is shorter than a checkpoint, which pre-copies and then writes the
// whole memory image, slower still in the TCG VM.
const crictlTimeout = "10m"

// Crictl runs crictl against this daemon's CRI services and returns its
// standard output; a failure's error holds both outputs.
func (d *Daemon) Crictl(ctx context.Context, args ...string) (string, error) {
	endpoint := "unix://" + d.Address
	cmd := exec.CommandContext(ctx, "crictl", append([]string{
		// No config file: the flags say everything, and a machine's
		// /etc/crictl.yaml must not redirect the tests.
		"--config", "/dev/null",
		"--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", crictlTimeout,
	}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %w: %s%s", strings.Join(args, " "), err, out, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}
