package settings

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/precopy/precopy/precopy/policy"
)

// AnnotationPrefix starts every annotation this package reads.
const AnnotationPrefix = "io.precopy."

// The per-container OCI annotations. The config file has the same keys
// without the prefix.
const (
	AnnotationTargetDowntime = AnnotationPrefix + "target-downtime" // Policy.TargetFreeze, a duration
	AnnotationMaxRounds      = AnnotationPrefix + "max-rounds"      // Policy.MaxRounds, 0..policy.MaxRoundsLimit
	AnnotationRounds         = AnnotationPrefix + "rounds"          // Policy.FixedRounds, 0..policy.MaxRoundsLimit
	AnnotationTimeBudget     = AnnotationPrefix + "time-budget"     // Policy.TimeBudget, a duration
	AnnotationMemoryBudget   = AnnotationPrefix + "memory-budget"   // Policy.MemoryBudget, bytes
	AnnotationMinSize        = AnnotationPrefix + "min-size"        // Policy.MinSize, bytes
	AnnotationMode           = AnnotationPrefix + "mode"            // Mode
	AnnotationEarlyThaw      = AnnotationPrefix + "early-thaw"      // EarlyThaw
	AnnotationPinLimit       = AnnotationPrefix + "pin-limit"       // PinLimit, a duration (0: never pin)
	AnnotationTCP            = AnnotationPrefix + "tcp"             // TCP
	// Incremental checkpoints: "on" keeps each checkpoint's memory image,
	// up to the budget, so the next one pre-copies only what changed.
	AnnotationIncremental       = AnnotationPrefix + "incremental"        // Incremental, on or off
	AnnotationIncrementalBudget = AnnotationPrefix + "incremental-budget" // IncrementalBudget, bytes
)

// ErrUnknownAnnotation is wrapped by the error for an io.precopy.* key
// this package does not know.
var ErrUnknownAnnotation = errors.New("unknown annotation")

// AnnotationError is a bad io.precopy.* annotation.
type AnnotationError struct {
	Key, Value string
	// Want says what the value should have been; empty for unknown keys.
	Want string
	// Err is the underlying cause, if any.
	Err error
}

func (e *AnnotationError) Error() string {
	if errors.Is(e.Err, ErrUnknownAnnotation) {
		msg := fmt.Sprintf("%s: unknown annotation", e.Key)
		if s := closestKey(e.Key); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		return msg + "; known: " + strings.Join(annotationKeys(), ", ")
	}
	msg := fmt.Sprintf("%s: %q is not %s", e.Key, e.Value, e.Want)
	if e.Err != nil {
		msg += ": " + strings.TrimPrefix(e.Err.Error(), "time: ")
	}
	return msg
}

func (e *AnnotationError) Unwrap() error { return e.Err }

// setting parses one annotation into Settings.
type setting struct {
	want  string
	apply func(s *Settings, v string) error
}

// roundCount parses a number of rounds.
func roundCount(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > policy.MaxRoundsLimit {
		return 0, errSilent // the want says it all
	}
	return n, nil
}

var known = map[string]setting{
	AnnotationTargetDowntime: {"a positive duration like 50ms or 1.5s", func(s *Settings, v string) (err error) {
		s.Policy.TargetFreeze, err = parsePositiveDuration(v)
		return err
	}},
	AnnotationMaxRounds: {fmt.Sprintf("a whole number from 0 to %d", policy.MaxRoundsLimit), func(s *Settings, v string) (err error) {
		s.Policy.MaxRounds, err = roundCount(v)
		return err
	}},
	AnnotationRounds: {fmt.Sprintf("a whole number from 0 (adaptive) to %d", policy.MaxRoundsLimit), func(s *Settings, v string) (err error) {
		s.Policy.FixedRounds, err = roundCount(v)
		return err
	}},
	AnnotationTimeBudget: {"a positive duration like 30s or 2m", func(s *Settings, v string) (err error) {
		s.Policy.TimeBudget, err = parsePositiveDuration(v)
		return err
	}},
	AnnotationMemoryBudget: {"a positive byte size like 512MiB or 2GB", func(s *Settings, v string) (err error) {
		s.Policy.MemoryBudget, err = positiveBytes(v)
		return err
	}},
	AnnotationMinSize: {"a byte size like 64MiB, or 0", func(s *Settings, v string) (err error) {
		s.Policy.MinSize, err = ParseBytes(v)
		return err
	}},
	AnnotationEarlyThaw: {alternatives(earlyThaws), func(s *Settings, v string) error {
		return choose(&s.EarlyThaw, v, earlyThaws)
	}},
	AnnotationPinLimit: {"a duration like 100ms, or 0 (never pin)", func(s *Settings, v string) error {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			return err
		case d < 0:
			return errSilent
		}
		s.PinLimit = d
		return nil
	}},
	AnnotationMode: {alternatives(modes), func(s *Settings, v string) error {
		return choose(&s.Mode, v, modes)
	}},
	AnnotationTCP: {alternatives(tcps), func(s *Settings, v string) error {
		return choose(&s.TCP, v, tcps)
	}},
	AnnotationIncremental: {`"on" or "off"`, func(s *Settings, v string) error {
		// The config file's TOML booleans arrive as true and false.
		switch v {
		case "on", "true":
			s.Incremental = true
		case "off", "false":
			s.Incremental = false
		default:
			return errSilent
		}
		return nil
	}},
	AnnotationIncrementalBudget: {"a positive byte size like 2GiB", func(s *Settings, v string) (err error) {
		s.IncrementalBudget, err = positiveBytes(v)
		return err
	}},
}

// positiveBytes is v as a byte size above zero (errSilent for zero: the
// setting's description says what it takes).
func positiveBytes(v string) (uint64, error) {
	n, err := ParseBytes(v)
	if err == nil && n == 0 {
		err = errSilent
	}
	return n, err
}

// choose sets *dst to v if v is one of values.
func choose[T ~string](dst *T, v string, values []T) error {
	if !slices.Contains(values, T(v)) {
		return errSilent
	}
	*dst = T(v)
	return nil
}

// errSilent marks a parse failure whose cause adds nothing to the want.
var errSilent = errors.New("")

// apply returns base with the io.precopy.* annotations applied. Keys
// outside io.precopy. are ignored; an unknown io.precopy.* key is an
// error, so that a typo does not silently leave a default in place. Every
// bad annotation is reported, each naming its key and value.
func apply(base Settings, annotations map[string]string) (Settings, error) {
	s := base
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		if !strings.HasPrefix(key, AnnotationPrefix) {
			continue
		}
		raw := annotations[key]
		k, ok := known[key]
		if !ok {
			errs = append(errs, &AnnotationError{Key: key, Value: raw, Err: ErrUnknownAnnotation})
			continue
		}
		if err := k.apply(&s, strings.TrimSpace(raw)); err != nil {
			if err == errSilent {
				err = nil
			}
			errs = append(errs, &AnnotationError{Key: key, Value: raw, Want: k.want, Err: err})
		}
	}
	if len(errs) > 0 {
		return base, errors.Join(errs...)
	}
	if err := s.Policy.Validate(); err != nil {
		return base, fmt.Errorf("pre-copy policy: %w", err)
	}
	return s, nil
}

func parsePositiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, err
	case d <= 0:
		return 0, errSilent
	}
	return d, nil
}

func annotationKeys() []string { return slices.Sorted(maps.Keys(known)) }

// closestKey is the known key nearest to key by edit distance, if it is
// near enough to be a typo.
func closestKey(key string) string {
	best, bestDist := "", 4
	for k := range known {
		if d := editDistance(key, k); d < bestDist || (d == bestDist && k < best) {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
