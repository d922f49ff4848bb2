package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AnnotationPrefix starts every annotation this package reads.
const AnnotationPrefix = "io.precopy."

// The per-container OCI annotations FromAnnotations reads.
const (
	AnnotationTargetDowntime = AnnotationPrefix + "target-downtime" // Config.TargetFreeze, a duration
	AnnotationMaxRounds      = AnnotationPrefix + "max-rounds"      // Config.MaxRounds, 0..MaxRoundsLimit
	AnnotationRounds         = AnnotationPrefix + "rounds"          // Config.FixedRounds, 0..MaxRoundsLimit
	AnnotationTimeBudget     = AnnotationPrefix + "time-budget"     // Config.TimeBudget, a duration
	AnnotationMemoryBudget   = AnnotationPrefix + "memory-budget"   // Config.MemoryBudget, bytes
	AnnotationMinSize        = AnnotationPrefix + "min-size"        // Config.MinSize, bytes
	AnnotationMode           = AnnotationPrefix + "mode"            // Config.Mode
	AnnotationEarlyThaw      = AnnotationPrefix + "early-thaw"      // Config.EarlyThaw
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

// setting parses one annotation into a Config.
type setting struct {
	want  string
	apply func(c *Config, v string) error
}

var settings = map[string]setting{
	AnnotationTargetDowntime: {"a positive duration like 50ms or 1.5s", func(c *Config, v string) (err error) {
		c.TargetFreeze, err = parsePositiveDuration(v)
		return err
	}},
	AnnotationMaxRounds: {fmt.Sprintf("a whole number from 0 to %d", MaxRoundsLimit), func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxRoundsLimit {
			return errSilent // the want says it all
		}
		c.MaxRounds = n
		return nil
	}},
	AnnotationRounds: {fmt.Sprintf("a whole number from 0 (adaptive) to %d", MaxRoundsLimit), func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxRoundsLimit {
			return errSilent
		}
		c.FixedRounds = n
		return nil
	}},
	AnnotationTimeBudget: {"a positive duration like 30s or 2m", func(c *Config, v string) (err error) {
		c.TimeBudget, err = parsePositiveDuration(v)
		return err
	}},
	AnnotationMemoryBudget: {"a positive byte size like 512MiB or 2GB", func(c *Config, v string) error {
		n, err := ParseBytes(v)
		switch {
		case err != nil:
			return err
		case n == 0:
			return errSilent
		}
		c.MemoryBudget = n
		return nil
	}},
	AnnotationMinSize: {"a byte size like 64MiB, or 0", func(c *Config, v string) (err error) {
		c.MinSize, err = ParseBytes(v)
		return err
	}},
	AnnotationEarlyThaw: {`"auto", "never" or "force"`, func(c *Config, v string) (err error) {
		c.EarlyThaw, err = ParseEarlyThaw(v)
		if err != nil {
			return errSilent
		}
		return nil
	}},
	AnnotationMode: {`"always", "never" or "annotated"`, func(c *Config, v string) (err error) {
		c.Mode, err = ParseMode(v)
		if err != nil {
			return errSilent
		}
		return nil
	}},
}

// errSilent marks a parse failure whose cause adds nothing to the want.
var errSilent = errors.New("")

// FromAnnotations returns base with a container's io.precopy.* annotations
// applied. Keys outside io.precopy. are ignored; an unknown io.precopy.*
// key is an error, so that a typo does not silently leave a default in
// place. Every bad annotation is reported, each naming its key and value.
func FromAnnotations(base Config, annotations map[string]string) (Config, error) {
	cfg := base
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		if !strings.HasPrefix(key, AnnotationPrefix) {
			continue
		}
		raw := annotations[key]
		s, ok := settings[key]
		if !ok {
			errs = append(errs, &AnnotationError{Key: key, Value: raw, Err: ErrUnknownAnnotation})
			continue
		}
		if err := s.apply(&cfg, strings.TrimSpace(raw)); err != nil {
			if err == errSilent {
				err = nil
			}
			errs = append(errs, &AnnotationError{Key: key, Value: raw, Want: s.want, Err: err})
		}
	}
	if len(errs) > 0 {
		return base, errors.Join(errs...)
	}
	if err := cfg.Validate(); err != nil {
		return base, fmt.Errorf("pre-copy policy from annotations: %w", err)
	}
	return cfg, nil
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

func annotationKeys() []string { return slices.Sorted(maps.Keys(settings)) }

// closestKey is the known key nearest to key by edit distance, if it is
// near enough to be a typo.
func closestKey(key string) string {
	best, bestDist := "", 4
	for k := range settings {
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
