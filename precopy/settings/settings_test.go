package settings

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWithApplies(t *testing.T) {
	base := Default()
	got, err := base.With(map[string]string{
		AnnotationTargetDowntime:    "50ms",
		AnnotationMaxRounds:         "3",
		AnnotationRounds:            "2",
		AnnotationTimeBudget:        " 2m ", // surrounding spaces are forgiven
		AnnotationMemoryBudget:      "512MiB",
		AnnotationMinSize:           "0",
		AnnotationMode:              "never",
		AnnotationEarlyThaw:         "force",
		AnnotationIncremental:       "on",
		AnnotationIncrementalBudget: "1.5GiB",
		AnnotationTCP:               "close",
		// Not ours: ignored, whatever they hold.
		"io.kubernetes.cri.container-type": "container",
		"io.precopyx.max-rounds":           "abc",
		"org.criu.config":                  "",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := base
	want.Policy.TargetFreeze = 50 * time.Millisecond
	want.Policy.MaxRounds = 3
	want.Policy.FixedRounds = 2
	want.Policy.TimeBudget = 2 * time.Minute
	want.Policy.MemoryBudget = 512 << 20
	want.Policy.MinSize = 0
	want.Mode = ModeNever
	want.EarlyThaw = EarlyThawForce
	want.TCP = TCPClose
	want.Incremental, want.IncrementalBudget = true, 1536<<20
	if got != want {
		t.Errorf("With =\n %+v\nwant\n %+v", got, want)
	}
}

func TestWithNoneKeepsBase(t *testing.T) {
	base := Default()
	base.Policy.MaxRounds = 7
	for _, a := range []map[string]string{nil, {}, {"app": "web"}} {
		got, err := base.With(a)
		if err != nil || got != base {
			t.Errorf("With(%v) = %+v, %v; want the base unchanged", a, got, err)
		}
	}
}

func TestWithRejects(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       string
	}{
		{AnnotationMaxRounds, "abc", `io.precopy.max-rounds: "abc" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "21", `io.precopy.max-rounds: "21" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "-1", `io.precopy.max-rounds: "-1" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "2.5", `io.precopy.max-rounds: "2.5" is not a whole number from 0 to 20`},
		{AnnotationRounds, "30", `io.precopy.rounds: "30" is not a whole number from 0 (adaptive) to 20`},
		{AnnotationTargetDowntime, "50", `io.precopy.target-downtime: "50" is not a positive duration like 50ms or 1.5s: missing unit in duration "50"`},
		{AnnotationTargetDowntime, "0s", `io.precopy.target-downtime: "0s" is not a positive duration like 50ms or 1.5s`},
		{AnnotationTargetDowntime, "-5ms", `io.precopy.target-downtime: "-5ms" is not a positive duration like 50ms or 1.5s`},
		{AnnotationTimeBudget, "", `io.precopy.time-budget: "" is not a positive duration like 30s or 2m: invalid duration ""`},
		{AnnotationMemoryBudget, "512XB", `io.precopy.memory-budget: "512XB" is not a positive byte size like 512MiB or 2GB: unknown unit "XB", want ` + UnitList},
		{AnnotationMemoryBudget, "0", `io.precopy.memory-budget: "0" is not a positive byte size like 512MiB or 2GB`},
		{AnnotationMinSize, "-1MiB", `io.precopy.min-size: "-1MiB" is not a byte size like 64MiB, or 0: negative`},
		{AnnotationMode, "sometimes", `io.precopy.mode: "sometimes" is not "always", "never" or "annotated"`},
		{AnnotationMode, "Always", `io.precopy.mode: "Always" is not "always", "never" or "annotated"`},
		{AnnotationEarlyThaw, "yes", `io.precopy.early-thaw: "yes" is not "auto", "never" or "force"`},
		{AnnotationTCP, "established", `io.precopy.tcp: "established" is not "restore", "close" or "refuse"`},
		{AnnotationIncremental, "yes", `io.precopy.incremental: "yes" is not "on" or "off"`},
		{AnnotationIncrementalBudget, "0", `io.precopy.incremental-budget: "0" is not a positive byte size like 2GiB`},
	} {
		base := Default()
		got, err := base.With(map[string]string{tc.key: tc.value, "other": "x"})
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s=%q: error %v\nwant %s", tc.key, tc.value, err, tc.want)
		}
		var ae *AnnotationError
		if !errors.As(err, &ae) || ae.Key != tc.key || ae.Value != tc.value {
			t.Errorf("%s=%q: error %#v is not an AnnotationError naming it", tc.key, tc.value, err)
		}
		if got != base {
			t.Errorf("%s=%q: settings changed on error", tc.key, tc.value)
		}
	}
}

// A typo must not silently leave the default in place.
func TestWithRejectsUnknownKeys(t *testing.T) {
	_, err := Default().With(map[string]string{"io.precopy.max-round": "3"})
	if !errors.Is(err, ErrUnknownAnnotation) {
		t.Fatalf("error %v, want ErrUnknownAnnotation", err)
	}
	for _, want := range []string{"io.precopy.max-round: unknown annotation", "did you mean io.precopy.max-rounds?", "known: io.precopy.early-thaw, io.precopy.incremental, io.precopy.incremental-budget, io.precopy.max-rounds"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	_, err = Default().With(map[string]string{"io.precopy.speed": "fast"})
	if err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("error %v: no suggestion expected for a key unlike any", err)
	}
}

func TestWithReportsEveryBadKey(t *testing.T) {
	_, err := Default().With(map[string]string{
		AnnotationMaxRounds:   "many",
		AnnotationMode:        "maybe",
		"io.precopy.downtime": "50ms",
	})
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "io.precopy.downtime:") ||
		!strings.HasPrefix(lines[1], AnnotationMaxRounds+":") || !strings.HasPrefix(lines[2], AnnotationMode+":") {
		t.Errorf("want one line per bad key, sorted; got:\n%s", err)
	}
}

func TestWithValidatesBase(t *testing.T) {
	base := Default()
	base.Policy.MinShrink = 2
	if _, err := base.With(map[string]string{AnnotationMaxRounds: "3"}); err == nil {
		t.Error("invalid base accepted")
	}
}

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"0", 0},
		{"4096", 4096},
		{"4096B", 4096},
		{"512MiB", 512 << 20},
		{"512Mi", 512 << 20},
		{"512mib", 512 << 20},
		{"512 MiB", 512 << 20},
		{"2GB", 2e9},
		{"2G", 2e9},
		{"2mb", 2e6},
		{"1.5GiB", 3 << 29},
		{"0.5KiB", 512},
		{"1.0001KB", 1000}, // rounds down
		{"1TiB", 1 << 40},
		{"8191TiB", 8191 << 40},
	} {
		got, err := ParseBytes(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1..5MiB", ".", "1.2.3", "12 34", "1e9", "99999999999TiB", "0x10", "8EiB", "1 2 MiB"} {
		if got, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", bad, got)
		}
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	s, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if err != nil || s != Default() {
		t.Fatalf("missing file: %+v, %v; want the defaults", s, err)
	}

	s, err = Load(writeConfig(t, `
mode = "annotated"
target-downtime = "50ms"
max-rounds = 3
memory-budget = "1GiB"
early-thaw = "never"
tcp = "refuse"
precopyd-address = ""
rounds-dir = "/var/lib/precopy/rounds"
incremental = true
incremental-budget = "2GiB"
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != ModeAnnotated || s.Policy.TargetFreeze != 50*time.Millisecond || s.Policy.MaxRounds != 3 ||
		s.Policy.MemoryBudget != 1<<30 || s.EarlyThaw != EarlyThawNever || s.TCP != TCPRefuse || s.PrecopydAddress != "" ||
		s.RoundsDir != "/var/lib/precopy/rounds" || !s.Incremental || s.IncrementalBudget != 2<<30 {
		t.Errorf("settings %+v", s)
	}
	// A container's annotation still wins over the file's default mode.
	c, err := s.With(map[string]string{AnnotationMode: "always"})
	if err != nil || c.Mode != ModeAlways {
		t.Errorf("annotated default, annotated container: %+v, %v", c, err)
	}
	if c, _ := s.With(nil); c.Mode != ModeNever {
		t.Errorf("annotated default, container without annotation: mode %s, want never", c.Mode)
	}

	for text, want := range map[string]string{
		`max-round = 3`:           "io.precopy.max-round: unknown annotation (did you mean io.precopy.max-rounds?)",
		`max-rounds = 99`:         `"99" is not a whole number`,
		`target-downtime = "-1s"`: "target-downtime",
		`max-rounds = [1]`:        "max-rounds: a []interface {} is not a setting's value",
		`max-rounds = `:           "precopy config",
		`incremental = "yes"`:     `io.precopy.incremental: "yes" is not "on" or "off"`,
		`rounds-dir = "rounds"`:   `rounds-dir "rounds": must be an absolute, clean path`,
		`rounds-dir = "/a/../b"`:  `rounds-dir "/a/../b": must be an absolute, clean path`,
	} {
		if _, err := Load(writeConfig(t, text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", text, err, want)
		}
	}
	// A host path is the operator's: a container cannot annotate one.
	if _, err := s.With(map[string]string{AnnotationPrefix + "rounds-dir": "/etc"}); err == nil {
		t.Error("io.precopy.rounds-dir accepted as an annotation")
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Error("a directory read as a config file")
	}
}

func TestPath(t *testing.T) {
	t.Setenv("PRECOPY_CONFIG", "")
	if Path() != ConfigPath {
		t.Errorf("Path() = %s without PRECOPY_CONFIG", Path())
	}
	t.Setenv("PRECOPY_CONFIG", "/x.toml")
	if Path() != "/x.toml" {
		t.Errorf("Path() = %s, want $PRECOPY_CONFIG", Path())
	}
}
