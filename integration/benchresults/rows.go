// Package benchresults turns the checkpoint bench's per-run rows into what
// docs/benchmarks holds: a CSV of every run, a markdown table of medians
// and spreads per cell, and PNG plots. It measures nothing: the rows come
// from the bench's output (`row key=value ...` lines), so the rendering
// runs on the host even when the measuring ran in the VM tier.
package benchresults

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Row is one measured checkpoint. The field tags are the row's keys in
// the bench's output and the CSV's column names.
type Row struct {
	SizeMiB  int    `row:"size_mib"`
	Workload string `row:"workload"`
	Config   string `row:"config"`
	// Storage is where containerd kept content and snapshots: "disk"
	// (its local content store and overlayfs) or "precopyd" (precopyd's
	// memory-backed ones).
	Storage string `row:"storage"`
	Run     int    `row:"run"`
	// PauseMS is the workload's own longest loop gap.
	PauseMS float64 `row:"pause_ms"`
	// FinalDumpMS is CRIU's freezing + frozen time of the final dump.
	FinalDumpMS float64 `row:"final_dump_ms"`
	// CheckpointMS is the client's Pause, Checkpoint and Resume together.
	CheckpointMS float64 `row:"checkpoint_ms"`
	ImageMiB     float64 `row:"image_mib"`
	Rounds       int     `row:"rounds"`
	// The frozen window's parts (harness.Window).
	RWDiffMS  float64 `row:"frozen_rw_diff_ms"`
	DumpMS    float64 `row:"frozen_dump_ms"`
	MergeMS   float64 `row:"frozen_merge_ms"`
	ContentMS float64 `row:"frozen_content_ms"`
	RestMS    float64 `row:"frozen_rest_ms"`
	// Stop is why pre-copy stopped (or was skipped); empty for stock.
	Stop string `row:"stop"`
}

// rowPrefix starts a row line in the bench's output.
const rowPrefix = "row "

// Line is r as the bench prints it.
func (r Row) Line() string {
	keys, values := r.fields()
	parts := make([]string, len(keys))
	for i := range keys {
		parts[i] = keys[i] + "=" + values[i]
	}
	return rowPrefix + strings.Join(parts, " ")
}

// fields are r's keys and formatted values, in declaration order.
func (r Row) fields() (keys, values []string) {
	v := reflect.ValueOf(r)
	for i := 0; i < v.NumField(); i++ {
		keys = append(keys, v.Type().Field(i).Tag.Get("row"))
		switch f := v.Field(i); f.Kind() {
		case reflect.Float64:
			values = append(values, strconv.FormatFloat(f.Float(), 'f', 1, 64))
		case reflect.Int:
			values = append(values, strconv.FormatInt(f.Int(), 10))
		default:
			values = append(values, f.String())
		}
	}
	return keys, values
}

// ParseRows reads the row lines of a bench output; other lines (progress,
// headers) are skipped.
func ParseRows(r io.Reader) ([]Row, error) {
	var rows []Row
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line, ok := strings.CutPrefix(sc.Text(), rowPrefix)
		if !ok {
			continue
		}
		row, err := parseRow(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		rows = append(rows, row)
	}
	return rows, sc.Err()
}

func parseRow(line string) (Row, error) {
	kv := map[string]string{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Row{}, fmt.Errorf("%q is not key=value", f)
		}
		kv[k] = v
	}
	var r Row
	v := reflect.ValueOf(&r).Elem()
	for i := 0; i < v.NumField(); i++ {
		key := v.Type().Field(i).Tag.Get("row")
		s, ok := kv[key]
		if !ok {
			return Row{}, fmt.Errorf("no %s", key)
		}
		switch f := v.Field(i); f.Kind() {
		case reflect.Float64:
			x, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return Row{}, fmt.Errorf("%s: %w", key, err)
			}
			f.SetFloat(x)
		case reflect.Int:
			x, err := strconv.Atoi(s)
			if err != nil {
				return Row{}, fmt.Errorf("%s: %w", key, err)
			}
			f.SetInt(int64(x))
		default:
			f.SetString(s)
		}
	}
	return r, nil
}

// WriteCSV writes rows with a header of their keys.
func WriteCSV(w io.Writer, rows []Row) error {
	cw := csv.NewWriter(w)
	keys, _ := Row{}.fields()
	if err := cw.Write(keys); err != nil {
		return err
	}
	for _, r := range rows {
		_, values := r.fields()
		if err := cw.Write(values); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Cell is the runs of one configuration on one workload, size and
// storage.
type Cell struct {
	SizeMiB                   int
	Workload, Config, Storage string
	Rows                      []Row
}

// Cells groups rows by size, workload, configuration and storage, in the
// order each first appears.
func Cells(rows []Row) []*Cell {
	var cells []*Cell
	for _, r := range rows {
		i := slices.IndexFunc(cells, func(c *Cell) bool {
			return c.SizeMiB == r.SizeMiB && c.Workload == r.Workload && c.Config == r.Config && c.Storage == r.Storage
		})
		if i < 0 {
			cells = append(cells, &Cell{SizeMiB: r.SizeMiB, Workload: r.Workload, Config: r.Config, Storage: r.Storage})
			i = len(cells) - 1
		}
		cells[i].Rows = append(cells[i].Rows, r)
	}
	return cells
}

// Find is the cell of that size, workload, configuration and storage, or
// nil.
func Find(cells []*Cell, size int, workload, config, storage string) *Cell {
	for _, c := range cells {
		if c.SizeMiB == size && c.Workload == workload && c.Config == config && c.Storage == storage {
			return c
		}
	}
	return nil
}

// Stat is a cell's median and range of one metric.
type Stat struct{ Median, Min, Max float64 }

// Of is the median and range of f over the cell's runs.
func (c *Cell) Of(f func(Row) float64) Stat {
	v := make([]float64, len(c.Rows))
	for i, r := range c.Rows {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return Stat{}
	}
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Stat{Median: m, Min: v[0], Max: v[len(v)-1]}
}

// Stops are the distinct reasons pre-copy stopped in the cell's runs.
func (c *Cell) Stops() []string {
	var s []string
	for _, r := range c.Rows {
		if r.Stop != "" && !slices.Contains(s, r.Stop) {
			s = append(s, r.Stop)
		}
	}
	return s
}
