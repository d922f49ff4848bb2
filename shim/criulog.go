//go:build linux

package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// withCRIUReason adds to err, a failed dump's, what CRIU's log in its work
// dir says went wrong: runc's own error only names a log file.
func withCRIUReason(err error, work string) error {
	reason := criuErrors(filepath.Join(work, "dump.log"))
	if reason == "" {
		return err
	}
	for _, h := range criuHints {
		if strings.Contains(reason, h.symptom) {
			reason += " (" + h.hint + ")"
		}
	}
	return fmt.Errorf("%w; CRIU: %s", err, reason)
}

// criuHints explain CRIU errors whose cause is not in them.
var criuHints = []struct{ symptom, hint string }{
	// Linux 6.16 refuses SO_PASSCRED/SO_PASSSEC on inet sockets.
	{"Can't get 1:16 opt", "CRIU older than 4.2 cannot dump inet sockets on Linux 6.16 and later: install CRIU 4.2 (make deps)"},
}

// criuErrors returns the Error lines of a CRIU log, without their time
// stamps and source positions, joined (the first four); "" when there are
// none. The rlimit error CRIU logs on hosts without CAP_SYS_RESOURCE, and
// carries on after, is left out.
func criuErrors(log string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return ""
	}
	var errs []string
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.Index(line, "Error (")
		if i < 0 || strings.Contains(line, "RLIMIT_NOFILE") {
			continue
		}
		msg := line[i:]
		if j := strings.Index(msg, "): "); j >= 0 {
			msg = msg[j+3:]
		}
		if len(errs) < 4 {
			errs = append(errs, msg)
		}
	}
	return strings.Join(errs, "; ")
}
