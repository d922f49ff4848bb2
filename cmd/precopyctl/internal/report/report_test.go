package report

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/policy"
)

const sampleCopyReason = "pagemap-1.img: page layout differs from the parent's at flat offset 8192 (vaddr 0x150000, not in the parent's pagemap) of 45056 bytes: the tail to rewrite (36864 bytes) is longer than the prefix kept"

// sample is a report as a pre-copied, incremental checkpoint writes it.
func sample() *precopy.Report {
	start := time.Date(2026, 12, 7, 10, 15, 0, 0, time.UTC)
	return &precopy.Report{
		Mode: "always", PreCopied: true, Trigger: precopy.TriggerPause,
		CRIUOptions: []string{"network-lock nftables"},
		Rounds: []policy.Round{
			{Index: 1, PagesWritten: 25000, PagesSkippedParent: 237000, Frozen: 45 * time.Millisecond, Wall: 600 * time.Millisecond, ImageBytes: 100 << 20,
				Flatten: 4200 * time.Millisecond, FlattenCopied: 237000, FlattenCopyReason: sampleCopyReason},
			{Index: 2, PagesWritten: 2000, PagesSkippedParent: 260000, Frozen: 40 * time.Millisecond, Wall: 120 * time.Millisecond,
				Flatten: 150 * time.Millisecond, FlattenAfterDump: true, FlattenTakenOver: 259990, FlattenCopied: 10},
		},
		Stop:    &policy.Decision{Reason: policy.ReasonTargetMet, PredictedFreeze: 210 * time.Millisecond},
		PreCopy: 1230 * time.Millisecond,
		Final: &policy.Round{PagesWritten: 3000, PagesSkippedParent: 259000, Freezing: 2 * time.Millisecond, Frozen: 310 * time.Millisecond, Start: start, Wall: time.Second, ImageBytes: 1 << 30,
			FlattenTakenOver: 259000},
		FinalFlatten: 120 * time.Millisecond,
		Thaw:         &precopy.Thaw{Early: false, Reason: "the client diffs the writable layer"},
		Incremental: &precopy.Incremental{
			Number: 4, Parent: &precopy.Parent{Number: 3, DumpedAt: start.Add(-20 * time.Second), Bytes: 1 << 30},
			PagesFromParent: 237000, BytesSaved: 237000 * 4096, Kept: true, KeptBytes: 1 << 30, Keep: time.Millisecond,
		},
	}
}

func noContainerd(context.Context) (*containerd.Client, context.Context, error) {
	return nil, nil, errors.New("containerd asked for a path")
}

func writeTar(t *testing.T, path string, gz bool, files map[string][]byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A large entry before the report, which a seekable read skips.
	for _, name := range []string{"pages-1.img", "checkpoint/pages-1.img"} {
		files[name] = make([]byte, 1<<20)
	}
	for _, name := range []string{"pages-1.img", "checkpoint/pages-1.img", "spec.dump", precopy.ReportFile, "checkpoint/" + precopy.ReportFile} {
		b, ok := files[name]
		if !ok {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	tw.Close()
	out := buf.Bytes()
	if gz {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		w.Write(out)
		w.Close()
		out = z.Bytes()
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func reportJSON(t *testing.T) []byte {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, sample()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadFromPaths(t *testing.T) {
	dir := t.TempDir()
	imageDir := filepath.Join(dir, "images")
	os.Mkdir(imageDir, 0o700)
	if err := sample().Write(imageDir); err != nil {
		t.Fatal(err)
	}
	extracted := filepath.Join(dir, "extracted")
	os.MkdirAll(filepath.Join(extracted, "checkpoint"), 0o700)
	if err := sample().Write(filepath.Join(extracted, "checkpoint")); err != nil {
		t.Fatal(err)
	}
	criTar := filepath.Join(dir, "c1.tar")
	writeTar(t, criTar, false, map[string][]byte{"spec.dump": []byte("{}"), "checkpoint/" + precopy.ReportFile: reportJSON(t)})
	criTgz := filepath.Join(dir, "c1.tar.gz")
	writeTar(t, criTgz, true, map[string][]byte{"checkpoint/" + precopy.ReportFile: reportJSON(t)})
	criuTar := filepath.Join(dir, "criu")
	writeTar(t, criuTar, false, map[string][]byte{precopy.ReportFile: reportJSON(t)})

	for _, tc := range []struct{ arg, kind string }{
		{imageDir, "dir"}, {extracted, "dir"}, {criTar, "archive"}, {criTgz, "archive"}, {criuTar, "archive"},
	} {
		r, src, err := Read(context.Background(), tc.arg, noContainerd)
		if err != nil {
			t.Errorf("%s: %v", tc.arg, err)
			continue
		}
		if src.Kind != tc.kind || r.Incremental == nil || r.Incremental.PagesFromParent != 237000 || len(r.Rounds) != 2 {
			t.Errorf("%s: read %s %+v", tc.arg, src.Kind, r)
		}
	}
}

func TestReadNotFound(t *testing.T) {
	dir := t.TempDir()
	noReport := filepath.Join(dir, "stock.tar")
	writeTar(t, noReport, false, map[string][]byte{"spec.dump": []byte("{}")})
	for _, arg := range []string{noReport, dir, filepath.Join(dir, "missing.tar"), "./missing"} {
		_, _, err := Read(context.Background(), arg, noContainerd)
		if !errdefs.IsNotFound(err) {
			t.Errorf("%s: %v, want not found", arg, err)
		}
	}
	_, _, err := Read(context.Background(), noReport, noContainerd)
	if !errors.Is(err, ErrNoReport) {
		t.Errorf("a checkpoint without a report: %v, want ErrNoReport", err)
	}
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, bytes.Repeat([]byte("x"), 2000), 0o600)
	if _, _, err := Read(context.Background(), garbage, noContainerd); err == nil || errdefs.IsNotFound(err) {
		t.Errorf("a file that is no tar: %v, want an error saying so", err)
	}
}

func TestReadImageNameAsksContainerd(t *testing.T) {
	asked := false
	connect := func(context.Context) (*containerd.Client, context.Context, error) {
		asked = true
		return nil, nil, errors.New("no containerd here")
	}
	if _, _, err := Read(context.Background(), "checkpoint/c1:latest", connect); err == nil || !asked {
		t.Errorf("an image name: asked containerd %v, err %v", asked, err)
	}
}

func TestWrite(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, Source{"image", "checkpoint/c1:latest"}, sample()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"checkpoint/c1:latest (image)",
		"always, pre-copied, pre-copy run by the pause",
		"checkpoint 4 of the task; parent: checkpoint 3, dumped 2026-12-07T10:14:40Z (1GiB kept); 237000 pages (925.8MiB) unchanged since, taken from it",
		"2 in 1.23s, stopped: target-met (predicted final freeze 210ms)",
		"freeze 312ms (predicted 210ms); 3000 pages written, 259000 taken from the rounds",
		"4.2s     0/237000",
		"150ms    259990/10",
		"round 2's flatten ran after the final dump",
		"round 1's flatten copied: " + sampleCopyReason,
		"120ms (the final dump with the rounds' image); 259000 pages taken over, 0 copied",
		"at the client's resume: the client diffs the writable layer",
		"network-lock nftables",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	buf.Reset()
	oneShot := &precopy.Report{Mode: "never", Skipped: `pre-copy mode is "never"`, Final: &policy.Round{Frozen: time.Second}}
	if err := Write(&buf, Source{"dir", "/x"}, oneShot); err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); !strings.Contains(out, "never, one-shot") || !strings.Contains(out, `pre-copy mode is "never"`) || strings.Contains(out, "predicted") {
		t.Errorf("one-shot report:\n%s", out)
	}
}
