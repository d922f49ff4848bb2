package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

// WriteJSON writes r as precopy wrote it into the image, indented.
func WriteJSON(w io.Writer, r *precopy.Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Write writes r for people: how the checkpoint was made, its rounds in a
// table, why pre-copy stopped or did not run, the predicted and the
// measured final freeze, the early thaw and its pin, and, for an
// incremental checkpoint, its parent and what it saved.
func Write(w io.Writer, src Source, r *precopy.Report) error {
	p := &printer{w: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	p.line("checkpoint", "%s (%s)", src.Name, src.Kind)
	how := "one-shot"
	if r.PreCopied {
		how = "pre-copied"
	}
	if r.Trigger != "" {
		how += fmt.Sprintf(", pre-copy run by the %s", r.Trigger)
	}
	p.line("mode", "%s, %s", orNone(r.Mode), how)
	if r.Skipped != "" {
		p.line("one-shot", "%s", r.Skipped)
	}
	if inc := r.Incremental; inc != nil {
		p.incremental(inc)
	}
	if len(r.Rounds) > 0 || r.Stop != nil {
		p.rounds(r)
	}
	if f := r.Final; f != nil {
		s := fmt.Sprintf("freeze %s", dur(f.Freeze()))
		if r.Stop != nil && r.PreCopied {
			s += fmt.Sprintf(" (predicted %s)", dur(r.Stop.PredictedFreeze))
		}
		s += fmt.Sprintf("; %d pages written", f.PagesWritten)
		if f.PagesSkippedParent > 0 {
			s += fmt.Sprintf(", %d taken from the rounds", f.PagesSkippedParent)
		}
		s += fmt.Sprintf("; call %s; image %s", dur(f.Wall), size(f.ImageBytes))
		p.line("final dump", "%s", s)
	}
	if r.FinalFlatten > 0 {
		s := fmt.Sprintf("%s (the final dump with the rounds' image)", dur(r.FinalFlatten))
		if f := r.Final; f != nil && f.FlattenTakenOver+f.FlattenCopied > 0 {
			s += fmt.Sprintf("; %d pages taken over, %d copied", f.FlattenTakenOver, f.FlattenCopied)
			if f.FlattenRangeShifts > 0 {
				s += fmt.Sprintf(", %d ranges shifted", f.FlattenRangeShifts)
			}
			if f.FlattenCopyReason != "" {
				s += ": " + f.FlattenCopyReason
			}
		}
		p.line("flatten", "%s", s)
	}
	if r.FellBack != "" {
		p.line("fell back", "redone one-shot: %s", r.FellBack)
	}
	if t := r.Thaw; t != nil {
		p.thaw(t)
	}
	if len(r.CRIUOptions) > 0 {
		p.line("criu options", "%s", strings.Join(r.CRIUOptions, "; "))
	}
	return p.flush()
}

type printer struct {
	w   *tabwriter.Writer
	err error
}

func (p *printer) line(key, format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, "%s\t%s\n", key, fmt.Sprintf(format, args...))
	}
}

func (p *printer) flush() error {
	if p.err != nil {
		return p.err
	}
	return p.w.Flush()
}

func (p *printer) incremental(inc *precopy.Incremental) {
	s := fmt.Sprintf("checkpoint %d of the task", inc.Number)
	if par := inc.Parent; par != nil {
		s += fmt.Sprintf("; parent: checkpoint %d, dumped %s (%s kept)", par.Number, par.DumpedAt.UTC().Format(time.RFC3339Nano), size(par.Bytes))
		s += fmt.Sprintf("; %d pages (%s) unchanged since, taken from it", inc.PagesFromParent, size(inc.BytesSaved))
		if inc.Unshare > 0 {
			s += fmt.Sprintf("; copying it cost %s (its files had other names)", dur(inc.Unshare))
		}
	} else {
		s += "; no parent: " + orNone(inc.NoParent)
	}
	p.line("incremental", "%s", s)
	if inc.Kept {
		p.line("kept", "this image (%s) for the next checkpoint, in %s", size(inc.KeptBytes), dur(inc.Keep))
	} else {
		p.line("not kept", "%s", orNone(inc.NotKept))
	}
}

func (p *printer) rounds(r *precopy.Report) {
	s := fmt.Sprintf("%d in %s", len(r.Rounds), dur(r.PreCopy))
	if d := r.Stop; d != nil {
		s += fmt.Sprintf(", stopped: %s (predicted final freeze %s)", d.Reason, dur(d.PredictedFreeze))
	}
	p.line("rounds", "%s", s)
	if len(r.Rounds) == 0 {
		return
	}
	p.line("", "round\twritten\tfrom parent\tfreeze\twall\tflatten\ttaken over/copied\tdirtied\timage")
	for _, rd := range r.Rounds {
		p.line("", "%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s", rd.Index, rd.PagesWritten, rd.PagesSkippedParent,
			dur(rd.Freeze()), dur(rd.Wall), dur(rd.Flatten), flattened(rd), dirtied(rd), size(rd.ImageBytes))
	}
	for _, rd := range r.Rounds {
		if rd.FlattenCopyReason != "" {
			p.line("", "round %d's flatten copied: %s", rd.Index, rd.FlattenCopyReason)
		}
		if rd.FlattenAfterDump {
			p.line("", "round %d's flatten ran after the final dump", rd.Index)
		}
	}
}

// flattened is how many pages of the previous image the round's flatten
// took over and copied, if it flattened any.
func flattened(r policy.Round) string {
	if r.FlattenTakenOver+r.FlattenCopied == 0 {
		return "-"
	}
	if r.FlattenRangeShifts > 0 {
		return fmt.Sprintf("%d/%d (%d shifts)", r.FlattenTakenOver, r.FlattenCopied, r.FlattenRangeShifts)
	}
	return fmt.Sprintf("%d/%d", r.FlattenTakenOver, r.FlattenCopied)
}

// dirtied is how many pages the load wrote during the round, if counted.
func dirtied(r policy.Round) string {
	if r.DirtiedAfter == 0 {
		return "-"
	}
	return fmt.Sprintf("%d in %s", r.Dirtied, dur(r.DirtiedAfter))
}

func (p *printer) thaw(t *precopy.Thaw) {
	when := "at the client's resume"
	if t.Early {
		when = "early, right after the final dump"
	}
	s := fmt.Sprintf("%s: %s", when, orNone(t.Reason))
	if !t.FrozenAt.IsZero() && !t.ThawedAt.IsZero() {
		s += fmt.Sprintf("; frozen %s", dur(t.ThawedAt.Sub(t.FrozenAt)))
	}
	p.line("thaw", "%s", s)
	if len(t.AfterThaw) > 0 {
		p.line("after thaw", "%s", strings.Join(t.AfterThaw, ", "))
	}
	if t.Pinned {
		s := fmt.Sprintf("writable layer pinned by %s", orNone(t.PinWhere))
		if t.PinFiles > 0 || t.PinBytes > 0 {
			s += fmt.Sprintf(": %d files, %s", t.PinFiles, size(t.PinBytes))
		}
		p.line("pin", "%s, in %s", s, dur(t.PinCost))
	}
}

func orNone(s string) string {
	if s == "" {
		return "(not given)"
	}
	return s
}

// dur rounds d for reading: ms below 10 s.
func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < 10*time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

func size(b int64) string { return units.BytesSize(float64(b)) }
