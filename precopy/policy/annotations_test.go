package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFromAnnotationsApplies(t *testing.T) {
	base := DefaultConfig()
	got, err := FromAnnotations(base, map[string]string{
		AnnotationTargetDowntime: "50ms",
		AnnotationMaxRounds:      "3",
		AnnotationTimeBudget:     " 2m ", // surrounding spaces are forgiven
		AnnotationMemoryBudget:   "512MiB",
		AnnotationMinSize:        "0",
		AnnotationMode:           "never",
		AnnotationEarlyThaw:      "force",
		// Not ours: ignored, whatever they hold.
		"io.kubernetes.cri.container-type": "container",
		"io.precopyx.max-rounds":           "abc",
		"org.criu.config":                  "",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := base
	want.TargetFreeze = 50 * time.Millisecond
	want.MaxRounds = 3
	want.TimeBudget = 2 * time.Minute
	want.MemoryBudget = 512 << 20
	want.MinSize = 0
	want.Mode = ModeNever
	want.EarlyThaw = EarlyThawForce
	if got != want {
		t.Errorf("FromAnnotations =\n %+v\nwant\n %+v", got, want)
	}
}

func TestFromAnnotationsNoneKeepsBase(t *testing.T) {
	base := DefaultConfig()
	base.MaxRounds = 7
	for _, a := range []map[string]string{nil, {}, {"app": "web"}} {
		got, err := FromAnnotations(base, a)
		if err != nil || got != base {
			t.Errorf("FromAnnotations(%v) = %+v, %v; want the base unchanged", a, got, err)
		}
	}
}

func TestFromAnnotationsRejects(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       string
	}{
		{AnnotationMaxRounds, "abc", `io.precopy.max-rounds: "abc" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "21", `io.precopy.max-rounds: "21" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "-1", `io.precopy.max-rounds: "-1" is not a whole number from 0 to 20`},
		{AnnotationMaxRounds, "2.5", `io.precopy.max-rounds: "2.5" is not a whole number from 0 to 20`},
		{AnnotationTargetDowntime, "50", `io.precopy.target-downtime: "50" is not a positive duration like 50ms or 1.5s: missing unit in duration "50"`},
		{AnnotationTargetDowntime, "0s", `io.precopy.target-downtime: "0s" is not a positive duration like 50ms or 1.5s`},
		{AnnotationTargetDowntime, "-5ms", `io.precopy.target-downtime: "-5ms" is not a positive duration like 50ms or 1.5s`},
		{AnnotationTimeBudget, "", `io.precopy.time-budget: "" is not a positive duration like 30s or 2m: invalid duration ""`},
		{AnnotationMemoryBudget, "512XB", `io.precopy.memory-budget: "512XB" is not a positive byte size like 512MiB or 2GB: unknown unit "XB", want ` + unitList},
		{AnnotationMemoryBudget, "0", `io.precopy.memory-budget: "0" is not a positive byte size like 512MiB or 2GB`},
		{AnnotationMinSize, "-1MiB", `io.precopy.min-size: "-1MiB" is not a byte size like 64MiB, or 0: negative`},
		{AnnotationMode, "sometimes", `io.precopy.mode: "sometimes" is not "always", "never" or "annotated"`},
		{AnnotationMode, "Always", `io.precopy.mode: "Always" is not "always", "never" or "annotated"`},
		{AnnotationEarlyThaw, "yes", `io.precopy.early-thaw: "yes" is not "auto", "never" or "force"`},
	} {
		base := DefaultConfig()
		got, err := FromAnnotations(base, map[string]string{tc.key: tc.value, "other": "x"})
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s=%q: error %v\nwant %s", tc.key, tc.value, err, tc.want)
		}
		var ae *AnnotationError
		if !errors.As(err, &ae) || ae.Key != tc.key || ae.Value != tc.value {
			t.Errorf("%s=%q: error %#v is not an AnnotationError naming it", tc.key, tc.value, err)
		}
		if got != base {
			t.Errorf("%s=%q: config changed on error", tc.key, tc.value)
		}
	}
}

// A typo must not silently leave the default in place.
func TestFromAnnotationsRejectsUnknownKeys(t *testing.T) {
	_, err := FromAnnotations(DefaultConfig(), map[string]string{"io.precopy.max-round": "3"})
	if !errors.Is(err, ErrUnknownAnnotation) {
		t.Fatalf("error %v, want ErrUnknownAnnotation", err)
	}
	for _, want := range []string{"io.precopy.max-round: unknown annotation", "did you mean io.precopy.max-rounds?", "known: io.precopy.early-thaw, io.precopy.max-rounds, io.precopy.memory-budget"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	_, err = FromAnnotations(DefaultConfig(), map[string]string{"io.precopy.speed": "fast"})
	if err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("error %v: no suggestion expected for a key unlike any", err)
	}
}

func TestFromAnnotationsReportsEveryBadKey(t *testing.T) {
	_, err := FromAnnotations(DefaultConfig(), map[string]string{
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

func TestFromAnnotationsValidatesBase(t *testing.T) {
	base := DefaultConfig()
	base.MinShrink = 2
	if _, err := FromAnnotations(base, map[string]string{AnnotationMaxRounds: "3"}); err == nil {
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
