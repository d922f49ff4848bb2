package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	precopyshim "github.com/precopy/precopy/shim"
)

// The labels and tag precopyctl's checkpoint images carry
// (cmd/precopyctl/internal/checkpoints; integration does not import cmd).
const (
	precopyctlLabelContainer = "io.precopy.checkpoint.container"
	precopyctlPrefix         = "checkpoint"
)

// precopyctl runs precopyctl against d in d's namespace and returns its
// stdout, stderr and exit code.
func precopyctl(t *testing.T, ctx context.Context, d *harness.Daemon, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, stack.bins.Path(harness.PrecopyctlBinary), append([]string{"--address", d.Address, "--namespace", d.Namespace}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("precopyctl %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// TestPrecopyctlReport checkpoints with ctr and reads the report with
// precopyctl: as text, and as JSON equal to the report in the image; a
// checkpoint stock runc-v2 made has none (exit code 3), nor has a missing
// one.
func TestPrecopyctlReport(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task := runMemload(t, d, "pctl-report", precopyshim.Runtime)
	const ref = "precopy.test/checkpoint:pctl-report"
	checkpointCtr(t, ctx, d, task.ID(), ref)
	t.Cleanup(func() { d.RemoveImage(context.Background(), ref) })
	want, err := harness.CheckpointReport(ctx, d.Client(), ref)
	if err != nil {
		t.Fatal(err)
	}

	out, stderr, code := precopyctl(t, ctx, d, "report", ref)
	t.Logf("precopyctl report %s:\n%s", ref, out)
	if code != 0 {
		t.Fatalf("report: exit code %d: %s", code, stderr)
	}
	for _, s := range []string{ref + " (image)", "final dump", "freeze", "mode"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	if want.Skipped != "" && !strings.Contains(out, want.Skipped) {
		t.Errorf("report does not say why pre-copy was skipped (%q)", want.Skipped)
	}

	out, stderr, code = precopyctl(t, ctx, d, "report", "--json", ref)
	if code != 0 {
		t.Fatalf("report --json: exit code %d: %s", code, stderr)
	}
	var got precopy.Report
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("report --json: %v: %s", err, out)
	}
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("report --json:\n%+v\nthe image's:\n%+v", got, *want)
	}

	stock := runMemload(t, d, "pctl-report-stock", precopyshim.RuncRuntime)
	const stockRef = "precopy.test/checkpoint:pctl-report-stock"
	checkpointCtr(t, ctx, d, stock.ID(), stockRef)
	t.Cleanup(func() { d.RemoveImage(context.Background(), stockRef) })
	for _, arg := range []string{stockRef, "precopy.test/checkpoint:none"} {
		if _, stderr, code := precopyctl(t, ctx, d, "report", arg); code != 3 {
			t.Errorf("report %s: exit code %d (%s), want 3 (not found)", arg, code, stderr)
		}
	}
}

// precopyctlRun is a running `precopyctl checkpoint`, its event lines
// read as they come.
type precopyctlRun struct {
	// failedOK: a failed checkpoint is expected (the task is being
	// killed), not an error.
	failedOK bool
	cmd      *exec.Cmd
	lines    chan string
	stderr   bytes.Buffer
	done     chan struct{}
}

// startPrecopyctl starts precopyctl with args against d; t's end kills
// it if it still runs.
func startPrecopyctl(t *testing.T, d *harness.Daemon, args ...string) *precopyctlRun {
	t.Helper()
	p := &precopyctlRun{lines: make(chan string, 100), done: make(chan struct{})}
	p.cmd = exec.Command(stack.bins.Path(harness.PrecopyctlBinary), append([]string{"--address", d.Address, "--namespace", d.Namespace}, args...)...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			t.Logf("precopyctl: %s", s.Text())
			p.lines <- s.Text()
		}
	}()
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// event is one of precopyctl's event lines: <time> <event> <container> key=value...
type event struct {
	name string
	kv   map[string]string
}

func parseEvent(line string) event {
	f := strings.SplitN(line, " ", 4)
	e := event{kv: map[string]string{}}
	if len(f) < 3 {
		return e
	}
	e.name = f[1]
	if len(f) == 4 {
		for _, p := range splitKV(f[3]) {
			if k, v, ok := strings.Cut(p, "="); ok {
				if uq, err := strconv.Unquote(v); err == nil {
					v = uq
				}
				e.kv[k] = v
			}
		}
	}
	return e
}

// splitKV splits key=value pairs on spaces outside quotes.
func splitKV(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && quoted && i+1 < len(s):
			cur.WriteByte(c)
			i++
			cur.WriteByte(s[i])
			continue
		case c == '"':
			quoted = !quoted
		case c == ' ' && !quoted:
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(out, cur.String())
}

// next waits for the next event line named one of names, failing on a
// line named in fail, or when precopyctl ends.
func (p *precopyctlRun) next(t *testing.T, names ...string) event {
	t.Helper()
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("precopyctl ended (%v) waiting for %v: %s", p.cmd.ProcessState, names, p.stderr.String())
			}
			e := parseEvent(line)
			if e.name == "checkpoint-failed" && !p.failedOK {
				t.Errorf("precopyctl: %s", line)
			}
			for _, n := range names {
				if e.name == n {
					return e
				}
			}
		case <-timeout:
			t.Fatalf("no %v from precopyctl in 5 minutes: %s", names, p.stderr.String())
		}
	}
}

// wait waits for precopyctl to exit and returns its exit code, the
// events it printed meanwhile in order.
func (p *precopyctlRun) wait(t *testing.T) (int, []event) {
	t.Helper()
	var events []event
	for line := range p.lines {
		events = append(events, parseEvent(line))
	}
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("precopyctl did not exit: %s", p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode(), events
}

// checkpointImages are the checkpoint images precopyctl keeps of
// container id, and the target of its latest alias.
func checkpointImages(t *testing.T, ctx context.Context, d *harness.Daemon, id string) (names []string, latest string) {
	t.Helper()
	is := d.Client().ImageService()
	imgs, err := is.List(ctx, fmt.Sprintf("labels.%q==%q", precopyctlLabelContainer, id))
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		names = append(names, img.Name)
	}
	alias, err := is.Get(ctx, precopyctlPrefix+"/"+id+":latest")
	if err != nil {
		t.Fatalf("latest alias of %s: %v", id, err)
	}
	for _, img := range imgs {
		if img.Target.Digest == alias.Target.Digest {
			latest = img.Name
		}
	}
	return names, latest
}

// removeCheckpointImages removes precopyctl's images of container id.
func removeCheckpointImages(t *testing.T, d *harness.Daemon, id string) {
	ctx, cancel := context.WithTimeout(d.Context(context.Background()), time.Minute)
	defer cancel()
	imgs, _ := d.Client().ImageService().List(ctx, fmt.Sprintf("labels.%q==%q", precopyctlLabelContainer, id))
	for _, img := range imgs {
		d.RemoveImage(ctx, img.Name)
	}
	d.RemoveImage(ctx, precopyctlPrefix+"/"+id+":latest")
}

// stdioFIFOs are the FIFOs of id's task, which a client that deletes it
// without its IO (precopyctl replacing a dead task) leaves behind; the
// test that made them removes them.
func stdioFIFOs(t *testing.T, ctx context.Context, d *harness.Daemon, id string) {
	t.Helper()
	resp, err := d.Client().TaskService().Get(ctx, &tasks.GetRequest{ContainerID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, f := range []string{resp.Process.Stdin, resp.Process.Stdout, resp.Process.Stderr} {
			if f != "" {
				os.Remove(f)
				os.Remove(filepath.Dir(f))
			}
		}
	})
}

// TestPrecopyctlCheckpointRestoreOnExit runs `precopyctl checkpoint
// --every --keep --restore-on-exit` on the workload: --keep is honoured
// (and the latest alias names the newest), a SIGKILL of the workload is
// answered by a restore of the newest checkpoint, whose memory verifies
// and holds what the workload did before that checkpoint, checkpointing
// goes on on the restored task, and a SIGTERM stops precopyctl leaving
// the task running, no lease or ingest behind, --keep images.
func TestPrecopyctlCheckpointRestoreOnExit(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	const id, keep = "pctl-supervised", 2
	// Incremental where pre-copy runs (the VM tier): the restore is of a
	// checkpoint whose first round dumped against the one before.
	task := runMemloadAnnotated(t, d, id, precopyshim.Runtime, incrementalOn, memloadArgs...)
	stdioFIFOs(t, ctx, d, id)
	t.Cleanup(func() { removeCheckpointImages(t, d, id) })
	p := startPrecopyctl(t, d, "checkpoint", "--every", "2s", "--keep", strconv.Itoa(keep), "--rw",
		"--restore-on-exit", "--grace", "500ms", "--log", filepath.Join(t.TempDir(), "restored.log"), id)

	for range keep + 1 {
		p.next(t, "checkpoint")
	}
	p.next(t, "removed")
	names, _ := checkpointImages(t, ctx, d, id)
	if len(names) != keep {
		t.Errorf("%d checkpoint images kept, want %d: %v", len(names), keep, names)
	}

	// A query marks the workload's memory (its query count); the newest
	// checkpoint asked for after it holds the mark, older ones do not.
	marked := queryBetweenCheckpoints(t, ctx, d, id)
	markedAt := time.Now().UTC()
	var newest event
	for {
		newest = p.next(t, "checkpoint")
		if takenAfter(t, newest.kv["image"], markedAt) {
			break
		}
	}
	if _, latest := checkpointImages(t, ctx, d, id); latest != newest.kv["image"] {
		t.Errorf("latest alias names %s, want the newest checkpoint %s", latest, newest.kv["image"])
	}
	p.failedOK = true
	if err := syscall.Kill(int(task.Pid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	died := p.next(t, "died")
	p.failedOK = false
	if !strings.Contains(died.kv["status"], "SIGKILL") {
		t.Errorf("died: %v", died.kv)
	}
	restored := p.next(t, "restored", "checkpoint")
	if restored.name != "restored" {
		t.Fatalf("a checkpoint after the death, before the restore: %v", restored.kv)
	}
	t.Logf("recovery %s, state lost %s", restored.kv["recovery"], restored.kv["lost"])
	if restored.kv["image"] != newest.kv["image"] {
		t.Errorf("restored %s, want the newest checkpoint %s", restored.kv["image"], newest.kv["image"])
	}
	task = loadTask(t, ctx, d, id)
	after := queryBetweenCheckpoints(t, ctx, d, id)
	checkMemoryContinued(t, marked, after)
	if after.QuerySeq <= marked.QuerySeq {
		t.Errorf("restored memory has answered %d queries, the marked one %d: restored from a checkpoint older than the newest", after.QuerySeq-1, marked.QuerySeq)
	}

	// Checkpointing goes on, on the restored task.
	p.next(t, "checkpoint")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, events := p.wait(t)
	if code != 0 || len(events) == 0 || events[len(events)-1].name != "stopped" {
		t.Errorf("precopyctl after SIGTERM: exit code %d, last events %v: %s", code, events, p.stderr.String())
	}
	requireStatus(t, ctx, task, containerd.Running)
	if names, _ := checkpointImages(t, ctx, d, id); len(names) != keep {
		t.Errorf("%d checkpoint images left, want %d: %v", len(names), keep, names)
	}
	if leases, err := d.Client().LeasesService().List(ctx); err != nil || len(leases) != 0 {
		t.Errorf("leases left: %v, %v", leases, err)
	}
	if ingests, err := d.Client().ContentStore().ListStatuses(ctx); err != nil || len(ingests) != 0 {
		t.Errorf("content ingests left: %v, %v", ingests, err)
	}
}

// queryBetweenCheckpoints is queryMemload for a container precopyctl
// checkpoints: runc refuses an exec while a checkpoint has the task
// paused, so a refused query is asked again.
func queryBetweenCheckpoints(t *testing.T, ctx context.Context, d *harness.Daemon, id string) workload.Status {
	t.Helper()
	for {
		st, err := d.Memload(ctx, id, "query")
		if err == nil {
			return st
		}
		if !strings.Contains(err.Error(), "paused") || ctx.Err() != nil {
			t.Fatalf("memload query in %s: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// takenAfter says whether checkpoint image name (<prefix>/<id>:<UTC time>)
// was asked for after t.
func takenAfter(tt *testing.T, name string, t time.Time) bool {
	tt.Helper()
	_, tag, ok := strings.Cut(name, ":")
	taken, err := time.Parse("20060102T150405.000Z", tag)
	if !ok || err != nil {
		tt.Fatalf("checkpoint image %q: %v", name, err)
	}
	return taken.After(t)
}

// TestPrecopyctlLeavesCleanExits: with --restore-on-exit, a task that
// exits cleanly (`ctr task kill`: SIGTERM) and one a user kills with
// SIGKILL and deletes within the grace are left alone, and precopyctl
// exits 0; the first is then restored by hand, `precopyctl restore
// --latest`.
func TestPrecopyctlLeavesCleanExits(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)

	t.Run("ctr task kill", func(t *testing.T) {
		const id = "pctl-killed"
		task := runMemload(t, d, id, precopyshim.Runtime)
		t.Cleanup(func() { removeCheckpointImages(t, d, id) })
		before := queryMemload(t, ctx, task)
		p := startPrecopyctl(t, d, "checkpoint", "--every", "1h", "--keep", "1", "--rw", "--restore-on-exit", "--grace", "0s", id)
		p.next(t, "checkpoint")
		if _, err := d.Ctr(ctx, "task", "kill", id); err != nil {
			t.Fatal(err)
		}
		code, events := p.wait(t)
		if code != 0 || len(events) == 0 || events[len(events)-1].name != "exited" {
			t.Fatalf("precopyctl after ctr task kill: exit code %d, events %v: %s", code, events, p.stderr.String())
		}
		if st, err := task.Status(ctx); err != nil || st.Status != containerd.Stopped {
			t.Errorf("task left %v, %v; want stopped, not restored", st.Status, err)
		}

		stdioFIFOs(t, ctx, d, id)
		out, stderr, code := precopyctl(t, ctx, d, "restore", "--latest", id)
		if code != 0 {
			t.Fatalf("precopyctl restore --latest: exit code %d: %s", code, stderr)
		}
		t.Logf("precopyctl restore: %s", out)
		task = loadTask(t, ctx, d, id)
		checkMemoryContinued(t, before, queryMemload(t, ctx, task))
		if _, stderr, code := precopyctl(t, ctx, d, "restore", "--latest", id); code != 1 || !strings.Contains(stderr, "alive") {
			t.Errorf("restore over a live task: exit code %d: %s; want 1, refused", code, stderr)
		}
	})

	t.Run("kill -9 then delete", func(t *testing.T) {
		const id = "pctl-deleted"
		task := runMemload(t, d, id, precopyshim.Runtime)
		stdioFIFOs(t, ctx, d, id)
		t.Cleanup(func() { removeCheckpointImages(t, d, id) })
		p := startPrecopyctl(t, d, "checkpoint", "--every", "1h", "--keep", "1", "--restore-on-exit", "--grace", "5s", id)
		p.next(t, "checkpoint")
		if _, err := d.Ctr(ctx, "task", "delete", "--force", id); err != nil {
			t.Fatal(err)
		}
		code, events := p.wait(t)
		if code != 0 || len(events) < 2 || events[len(events)-2].name != "died" || events[len(events)-1].name != "deleted" {
			t.Fatalf("precopyctl after ctr task delete --force: exit code %d, events %v: %s", code, events, p.stderr.String())
		}
		if _, err := task.Status(ctx); !errdefs.IsNotFound(err) {
			t.Errorf("task after a user's delete: %v; want gone, not restored", err)
		}
	})
}
