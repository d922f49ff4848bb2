package supervise

import "testing"

func TestExitClean(t *testing.T) {
	for _, tc := range []struct {
		code  uint32
		clean bool
		says  string
	}{
		{0, true, "exit status 0"},
		{1, false, "exit status 1"},
		{128 + 15, true, "killed by SIGTERM (exit status 143)"}, // ctr task kill's default
		{128 + 2, true, "killed by SIGINT (exit status 130)"},
		{128 + 1, true, "killed by SIGHUP (exit status 129)"},
		{128 + 13, true, "killed by SIGPIPE (exit status 141)"},
		{128 + 9, false, "killed by SIGKILL (exit status 137)"}, // the OOM killer's, or anyone's
		{128 + 11, false, "killed by SIGSEGV (exit status 139)"},
		{128 + 6, false, "killed by SIGABRT (exit status 134)"},
		{255, false, "exit status 255"}, // the shim's unknown status
		{128, false, "exit status 128"},
	} {
		e := Exit{Code: tc.code}
		if e.Clean() != tc.clean || e.String() != tc.says {
			t.Errorf("exit %d: clean %v (%q), want %v (%q)", tc.code, e.Clean(), e, tc.clean, tc.says)
		}
	}
}
