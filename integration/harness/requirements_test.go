package harness

import "testing"

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"v2.4.2":           {2, 4, 2},
		"2.4.2+unknown":    {2, 4, 2},
		"1.5.2":            {1, 5, 2},
		"runc version 1.3": {1, 3, 0},
		"Version: 4.1.1\n": {4, 1, 1},
		"1.6.0-rc.1":       {1, 6, 0},
	} {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseVersion("unknown"); err == nil {
		t.Error("ParseVersion(unknown) did not fail")
	}
}

func TestVersionLess(t *testing.T) {
	if !(Version{3, 17, 0}).Less(MinCRIU) {
		t.Error("CRIU 3.17 should be older than the minimum")
	}
	if (Version{4, 1, 1}).Less(MinCRIU) || (Version{2, 4, 2}).Less(MinContainerd) {
		t.Error("current versions reported as too old")
	}
}
