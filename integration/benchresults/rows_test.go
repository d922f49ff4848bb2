package benchresults

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRowRoundTrip(t *testing.T) {
	in := Row{SizeMiB: 256, Workload: "low", Config: "adaptive", Storage: StoragePrecopyd, Run: 2, PauseMS: 13047, FinalDumpMS: 1514.5,
		CheckpointMS: 21481, ImageMiB: 257.3, Rounds: 3, RWDiffMS: 40, DumpMS: 2100, MergeMS: 30, ContentMS: 10500, RestMS: 200, Stop: "not-shrinking"}
	out, err := ParseRows(strings.NewReader("progress: 1/2\n" + in.Line() + "\nscenario=x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0] != in {
		t.Fatalf("round trip: %+v, want %+v", out, in)
	}
	if _, err := ParseRows(strings.NewReader("row size_mib=1\n")); err == nil {
		t.Fatal("a row without every key parsed")
	}
}

func TestCellsMedianAndSpread(t *testing.T) {
	var rows []Row
	for i, p := range []float64{300, 100, 200, 400} {
		rows = append(rows, Row{SizeMiB: 64, Workload: "idle", Config: "stock", Run: i + 1, PauseMS: p})
	}
	rows = append(rows, Row{SizeMiB: 64, Workload: "idle", Config: "adaptive", Run: 1, PauseMS: 50, ContentMS: 30, DumpMS: 10})
	cells := Cells(rows)
	if len(cells) != 2 {
		t.Fatalf("%d cells, want 2", len(cells))
	}
	if s := cells[0].Of(pause); s != (Stat{Median: 250, Min: 100, Max: 400}) {
		t.Errorf("stock pause %+v", s)
	}
	if name, ms, share := Largest(cells[1]); name != "daemon tar + content write" || ms != 30 || share != 0.75 {
		t.Errorf("largest part: %s %v %v", name, ms, share)
	}
	var md bytes.Buffer
	if err := WriteTable(&md, cells); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| 64 MiB | idle | adaptive | 1 | 50 (50–50) | 0.20× |") {
		t.Errorf("table:\n%s", md.String())
	}
}

func TestRender(t *testing.T) {
	var rows []Row
	for _, size := range []int{64, 256} {
		for _, config := range Configs {
			for run := 1; run <= 3; run++ {
				rows = append(rows, Row{SizeMiB: size, Workload: "low", Config: config, Storage: StorageDisk, Run: run,
					PauseMS: float64(size * (10 + run)), DumpMS: 100, ContentMS: float64(size * 10), RestMS: 20})
			}
		}
	}
	// The storage comparison: 256 MiB on precopyd too.
	for _, config := range []string{"stock", "adaptive"} {
		for run := 1; run <= 3; run++ {
			rows = append(rows, Row{SizeMiB: 256, Workload: "low", Config: config, Storage: StoragePrecopyd, Run: run,
				PauseMS: float64(100 * run), DumpMS: 100, ContentMS: 777, RestMS: 20})
		}
	}
	dir := t.TempDir()
	if d := os.Getenv("BENCHRESULTS_KEEP"); d != "" {
		dir = d
	}
	if err := Render(dir, rows, []string{"bench matrix: test"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"matrix.csv", "results.md", "pause-low.png", "frozen-window.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| 256 MiB | low | adaptive | disk | 3 | 3072 (2816–3328) | 1.00× | 2560 (2560–2560) |",
		"| 256 MiB | low | adaptive | precopyd | 3 | 200 (100–300) | 1.00× | 777 (777–777) |",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pause-idle.png")); !os.IsNotExist(err) {
		t.Errorf("a plot for a workload that did not run: %v", err)
	}
}
