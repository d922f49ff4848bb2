package checkpoints

import (
	"slices"
	"sort"
	"testing"
	"time"
)

func TestNamesSortByTime(t *testing.T) {
	base := time.Date(2026, 12, 7, 10, 15, 0, 123_000_000, time.FixedZone("CET", 3600))
	if got, want := Name("checkpoint", "c1", base), "checkpoint/c1:20261207T091500.123Z"; got != want {
		t.Errorf("name %q, want %q (UTC, milliseconds)", got, want)
	}
	var names []string
	for _, d := range []time.Duration{time.Hour, time.Millisecond, 0, 59 * time.Second, 24 * time.Hour} {
		names = append(names, Name("checkpoint", "c1", base.Add(d)))
	}
	sorted := slices.Clone(names)
	sort.Strings(sorted)
	want := []string{names[2], names[1], names[3], names[0], names[4]}
	if !slices.Equal(sorted, want) {
		t.Errorf("names sort as %v, want by time %v", sorted, want)
	}
	if got := LatestName("checkpoint", "c1"); got != "checkpoint/c1:latest" {
		t.Errorf("latest alias %q", got)
	}
}

func TestStale(t *testing.T) {
	at := func(s int) Checkpoint {
		return Checkpoint{Name: Name("p", "c", time.Unix(int64(s), 0)), Taken: time.Unix(int64(s), 0)}
	}
	cs := []Checkpoint{at(30), at(10), at(40), at(20)} // any order
	for _, tc := range []struct {
		keep int
		want []int
	}{
		{keep: 1, want: []int{10, 20, 30}},
		{keep: 3, want: []int{10}},
		{keep: 4},
		{keep: 9},
	} {
		var got []int
		for _, c := range Stale(cs, tc.keep) {
			got = append(got, int(c.Taken.Unix()))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("keep %d: stale %v, want %v (the oldest)", tc.keep, got, tc.want)
		}
	}
}
