package benchresults

import (
	"fmt"
	"io"
	"strings"
)

// Parts are the frozen window's parts, in the order the client works.
var Parts = []struct {
	Name string
	Of   func(Row) float64
}{
	{"rw-layer diff", func(r Row) float64 { return r.RWDiffMS }},
	{"final CRIU dump", func(r Row) float64 { return r.DumpMS }},
	{"precopy merge", func(r Row) float64 { return r.MergeMS }},
	{"daemon tar + content write", func(r Row) float64 { return r.ContentMS }},
	{"rest (config, index, resume)", func(r Row) float64 { return r.RestMS }},
}

func pause(r Row) float64     { return r.PauseMS }
func finalDump(r Row) float64 { return r.FinalDumpMS }

// WriteTable writes a markdown table with a line per cell: medians with
// min–max, and each cell's pause and final dump against stock's on the
// same workload and size.
func WriteTable(w io.Writer, cells []*Cell) error {
	var b strings.Builder
	b.WriteString("| memory | workload | configuration | runs | pause ms | vs stock | final dump ms | vs stock | checkpoint ms | image MiB | rounds | frozen window: rw diff / dump / merge / content / rest (ms, medians) | stop |\n")
	b.WriteString("|---:|---|---|---:|---|---:|---|---:|---:|---:|---:|---|---|\n")
	for _, c := range cells {
		p, f := c.Of(pause), c.Of(finalDump)
		vsPause, vsFinal := "", ""
		if s := Find(cells, c.SizeMiB, c.Workload, "stock", c.Storage); s != nil && c.Config != "stock" {
			vsPause = ratio(p.Median, s.Of(pause).Median)
			vsFinal = ratio(f.Median, s.Of(finalDump).Median)
		}
		var parts []string
		for _, part := range Parts {
			parts = append(parts, fmt.Sprintf("%.0f", c.Of(part.Of).Median))
		}
		fmt.Fprintf(&b, "| %d MiB | %s | %s | %d | %s | %s | %s | %s | %.0f | %.0f | %.0f | %s | %s |\n",
			c.SizeMiB, c.Workload, c.Config, len(c.Rows), spread(p), vsPause, spread(f), vsFinal,
			c.Of(func(r Row) float64 { return r.CheckpointMS }).Median,
			c.Of(func(r Row) float64 { return r.ImageMiB }).Median,
			c.Of(func(r Row) float64 { return float64(r.Rounds) }).Median,
			strings.Join(parts, " / "), strings.Join(c.Stops(), ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func spread(s Stat) string { return fmt.Sprintf("%.0f (%.0f–%.0f)", s.Median, s.Min, s.Max) }

func ratio(a, b float64) string {
	if b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// Largest names the largest part of the cell's frozen window (by median)
// and its share of the window's medians summed.
func Largest(c *Cell) (name string, ms, share float64) {
	var total float64
	for _, part := range Parts {
		v := c.Of(part.Of).Median
		total += v
		if v > ms {
			name, ms = part.Name, v
		}
	}
	if total > 0 {
		share = ms / total
	}
	return name, ms, share
}

// StorageCells are the cells of every size, workload and configuration
// that ran on precopyd, each preceded by its counterpart on disk when the
// run has one.
func StorageCells(cells []*Cell) []*Cell {
	var out []*Cell
	for _, c := range cells {
		if c.Storage != StoragePrecopyd {
			continue
		}
		if d := Find(cells, c.SizeMiB, c.Workload, c.Config, StorageDisk); d != nil {
			out = append(out, d)
		}
		out = append(out, c)
	}
	return out
}

// WriteStorageTable writes a markdown table comparing storages: the pause,
// and the daemon's tar and content write with the rw-layer diff, whether
// or not they fell inside the pause.
func WriteStorageTable(w io.Writer, cells []*Cell) error {
	var b strings.Builder
	b.WriteString("| memory | workload | configuration | storage | runs | pause ms | vs stock | content write ms | rw diff ms | checkpoint ms |\n")
	b.WriteString("|---:|---|---|---|---:|---|---:|---|---:|---:|\n")
	for _, c := range cells {
		p := c.Of(pause)
		vs := ""
		if s := Find(cells, c.SizeMiB, c.Workload, "stock", c.Storage); s != nil && c.Config != "stock" {
			vs = ratio(p.Median, s.Of(pause).Median)
		}
		fmt.Fprintf(&b, "| %d MiB | %s | %s | %s | %d | %s | %s | %s | %.0f | %.0f |\n",
			c.SizeMiB, c.Workload, c.Config, c.Storage, len(c.Rows), spread(p), vs,
			spread(c.Of(func(r Row) float64 { return r.ContentMS })),
			c.Of(func(r Row) float64 { return r.RWDiffMS }).Median,
			c.Of(func(r Row) float64 { return r.CheckpointMS }).Median)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
