package integration

import (
	"context"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
)

// lowMinSize lets the tests' 32 MiB workload pre-copy (the policy's
// default minimum is 64 MiB). Through a handler's annotation allow-list
// it also shows that precopy's settings reach the shim from Kubernetes.
var lowMinSize = map[string]string{settings.AnnotationMinSize: "16MiB"}

// lowDirtyArgs make memload the low-dirty load pre-copy is for (like the
// bench's low-dirty scenarios: a hot tenth of memory rewritten slowly),
// small enough for the TCG VM.
var lowDirtyArgs = []string{"-mib", "32", "-dirty-mibps", "2", "-hot", "0.1"}

// TestCRICheckpointRuncShimPath checkpoints through containerd's CRI
// plugin, as the kubelet's checkpoint API does, on install path (a): a
// handler keeping runtime type io.containerd.runc.v2 with precopy's shim
// as runtime_path, so the CRI plugin sends runc's checkpoint options.
// precopy's settings come as container annotations.
func TestCRICheckpointRuncShimPath(t *testing.T) {
	testCRICheckpoint(t, handlerRuncPath, criAnnotations{container: lowMinSize})
}

// TestCRICheckpointPrecopyRuntime is TestCRICheckpointRuncShimPath on
// install path (b): a handler with runtime type io.containerd.precopy.v1,
// to which the CRI plugin sends no checkpoint options. precopy's settings
// come as pod annotations.
func TestCRICheckpointPrecopyRuntime(t *testing.T) {
	testCRICheckpoint(t, handlerPrecopy, criAnnotations{pod: lowMinSize})
}

// testCRICheckpoint checkpoints memload on handler twice, through the CRI
// API (CheckpointContainer) and through `crictl checkpoint --export`;
// each time the container keeps running with its memory intact, and the
// archive is one Kubernetes tools read, with a flat CRIU image set and
// precopy's report. The second archive's images are then restored with
// runc, and the restored workload verifies its memory.
func testCRICheckpoint(t *testing.T, handler string, a criAnnotations) {
	workDir := handler == handlerRuncPath
	d, cri := startCRIDaemon(t)
	ctx := testContext(t, d)
	pod := runCRIMemload(t, ctx, d, cri, "ckpt-"+handler, handler, a, lowDirtyArgs...)
	dir := t.TempDir()

	checkpointCRIRunning(t, ctx, cri, pod.ContainerID, filepath.Join(dir, "api.tar"), workDir)

	before := queryCRIMemload(t, ctx, cri, pod.ContainerID)
	ctlArchive := filepath.Join(dir, "crictl.tar")
	if _, err := d.Crictl(ctx, "checkpoint", "--export="+ctlArchive, pod.ContainerID); err != nil {
		t.Fatal(err)
	}
	requireCRIState(t, ctx, cri, pod.ContainerID, runtime.ContainerState_CONTAINER_RUNNING)
	checkMemoryContinued(t, before, queryCRIMemload(t, ctx, cri, pod.ContainerID))
	checkCRIArchive(t, ctx, ctlArchive, before, workDir)

	// Restore as elsewhere: the checkpointed container is gone. Its pod
	// stays, as the restore copies the pod's files (/etc/hosts and the
	// like) for the container's bind mounts.
	if _, err := cri.Runtime.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: pod.ContainerID}); err != nil {
		t.Fatal(err)
	}
	if _, err := cri.Runtime.RemoveContainer(ctx, &runtime.RemoveContainerRequest{ContainerId: pod.ContainerID}); err != nil {
		t.Fatal(err)
	}
	restored, err := harness.RestoreArchive(ctx, d, ctlArchive, "restored-"+handler, filepath.Join(dir, "restore"), d.CRICgroupParent(), stack.criuEnv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restored.Remove(context.Background()); err != nil {
			t.Errorf("remove restored container: %v", err)
		}
	})
	out, err := restored.Exec(ctx, "/"+harness.MemloadBinary, "query")
	if err != nil {
		t.Fatal(err)
	}
	st, err := workload.ParseStatus(out)
	if err != nil {
		t.Fatalf("memload query in the restored container: %v: %q", err, out)
	}
	checkMemoryContinued(t, before, st)
}

// TestCRICheckpointPodNetwork checkpoints a pod with a network namespace
// of its own, as most Kubernetes pods have (the other TestCRI* use the
// host's), through the CRI API on install path (a): the container keeps
// running, the archive is valid, and precopy locked the pod's network
// with nftables where CRIU can (a library call instead of CRIU exec'ing
// iptables-restore inside the frozen window).
func TestCRICheckpointPodNetwork(t *testing.T) {
	d, cri, ctx, pod := startNetworkedCRIPod(t, harness.MemloadPodSpec{Name: "ckpt-podnet", Args: lowDirtyArgs})
	if err := d.WaitCRIMemload(ctx, pod.ContainerID); err != nil {
		t.Fatal(err)
	}
	sandbox, err := cri.Runtime.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: pod.ID})
	if err != nil {
		t.Fatal(err)
	}
	if ip := sandbox.GetStatus().GetNetwork().GetIp(); ip == "" {
		t.Fatalf("pod %s has no IP: not in a network of its own", pod.ID)
	}

	report := checkpointCRIRunning(t, ctx, cri, pod.ContainerID, filepath.Join(t.TempDir(), "podnet.tar"), true)
	if err := harness.CRIUCheck(ctx, stack.criuEnv, "network_lock_nftables"); err != nil {
		t.Logf("CRIU cannot lock with nftables here (%v): precopy keeps iptables", err)
	} else if !slices.Contains(report.CRIUOptions, "network-lock nftables") {
		t.Errorf("the pod has its own network namespace and CRIU can lock it with nftables, but precopy's CRIU options are %q", report.CRIUOptions)
	}
}

// checkpointCRIRunning checkpoints the memload container id into archive
// through the CRI API, as the kubelet does, and checks that the container
// runs on with its memory intact and that the archive is valid; it
// returns precopy's report from the archive.
func checkpointCRIRunning(t *testing.T, ctx context.Context, cri *harness.CRIClient, id, archive string, workDir bool) *precopy.Report {
	t.Helper()
	before := queryCRIMemload(t, ctx, cri, id)
	if _, err := cri.Runtime.CheckpointContainer(ctx, &runtime.CheckpointContainerRequest{
		ContainerId: id, Location: archive,
	}); err != nil {
		t.Fatalf("CRI CheckpointContainer: %v", err)
	}
	requireCRIState(t, ctx, cri, id, runtime.ContainerState_CONTAINER_RUNNING)
	checkMemoryContinued(t, before, queryCRIMemload(t, ctx, cri, id))
	return checkCRIArchive(t, ctx, archive, before, workDir)
}

// checkCRIArchive checks a checkpoint archive the CRI plugin wrote: the
// files Kubernetes tools expect, a flat checkpoint/ image set with
// precopy's report in it (rounds on a kernel with soft-dirty, else a
// one-shot dump saying why), and checkpointctl's reading of it: the
// container, its process tree, and memload's memory (st is memload's
// status before the checkpoint).
//
// CRIU's dump.log and stats-dump (which checkpointctl's --stats reads)
// are in the archive only when the CRI plugin gave the runtime its CRIU
// work dir, which it does for runtime type io.containerd.runc.v2 alone
// (workDir): another runtime gets no checkpoint options, and the runc-v2
// task service then has CRIU work in a dir of its own that it deletes.
func checkCRIArchive(t *testing.T, ctx context.Context, path string, st workload.Status, workDir bool) *precopy.Report {
	t.Helper()
	a, err := harness.ReadArchive(path)
	if err != nil {
		t.Fatal(err)
	}
	if bad := a.NotFlat(); len(bad) > 0 {
		t.Errorf("%s: checkpoint/ is not one flat CRIU image set: %s", path, strings.Join(bad, ", "))
	}
	want := []string{"spec.dump", "config.dump", "status.dump", "status", "rootfs-diff.tar",
		"checkpoint/inventory.img", "checkpoint/pstree.img", "checkpoint/pagemap-1.img"}
	if workDir {
		want = append(want, "dump.log", "stats-dump")
	} else if !a.Has("stats-dump") {
		t.Logf("%s: no stats-dump or dump.log: the CRI plugin gave the runtime no CRIU work dir", filepath.Base(path))
	}
	for _, name := range want {
		if !a.Has(name) {
			t.Errorf("%s has no %s; it has %s", path, name, entryNames(a))
		}
	}
	// The pages file's number is the pagemap's pages_id: 1 for a one-shot
	// dump, the last round's for a flattened pre-copy.
	if !slices.ContainsFunc(a.CRIUImages(), func(n string) bool { return strings.HasPrefix(n, "pages-") }) {
		t.Errorf("%s has no checkpoint/pages-*.img; it has %s", path, entryNames(a))
	}
	report := a.Report
	if report == nil {
		t.Fatalf("%s has no checkpoint/%s", path, precopy.ReportFile)
	}
	switch {
	case stack.softDirty && (!report.PreCopied || len(report.Rounds) == 0):
		t.Errorf("%s: checkpoint was not pre-copied: skipped %q, %d rounds", path, report.Skipped, len(report.Rounds))
	case !stack.softDirty && !strings.Contains(report.Skipped, "dirty memory"):
		t.Errorf("%s: report does not say the kernel cannot track dirty memory: %+v", path, report)
	}
	if report.PreCopied {
		t.Logf("%s: pre-copied in %d rounds (%s), final dump froze %v",
			filepath.Base(path), len(report.Rounds), report.Stop.Reason, report.Final.Freeze())
	} else {
		t.Logf("%s: one-shot: %s", filepath.Base(path), report.Skipped)
	}

	mustContain(t, "checkpointctl show", checkpointctl(t, ctx, "show", path), "memload", harness.MemloadImage, "containerd")
	inspectArgs := []string{"inspect", "--ps-tree", path}
	if a.Has("stats-dump") {
		inspectArgs = append(inspectArgs, "--stats")
	}
	inspect := checkpointctl(t, ctx, inspectArgs...)
	mustContain(t, "checkpointctl inspect", inspect, "[1]  "+harness.MemloadBinary)
	if a.Has("stats-dump") {
		mustContain(t, "checkpointctl inspect --stats", inspect, "Pages written")
	}
	if mib := memoryPagesMiB(t, inspect); mib < float64(st.MiB) {
		t.Errorf("checkpointctl inspect: memory pages %.1f MiB, memload holds %d MiB", mib, st.MiB)
	}
	// memparse reads the process tree, but not the pages' size: the
	// go-criu v8 it is built with reads a pagemap field CRIU 4.2 added,
	// which CRIU 4.1's images lack, and shows 0 B for them.
	mustContain(t, "checkpointctl memparse", checkpointctl(t, ctx, "memparse", path), "1     "+harness.MemloadBinary)
	return report
}

var memoryPagesRE = regexp.MustCompile(`Memory pages size: ([0-9.]+) MiB`)

// memoryPagesMiB reads the memory pages' size from checkpointctl
// inspect's output.
func memoryPagesMiB(t *testing.T, inspect string) float64 {
	t.Helper()
	m := memoryPagesRE.FindStringSubmatch(inspect)
	if m == nil {
		t.Fatalf("checkpointctl inspect shows no memory pages size in MiB:\n%s", inspect)
	}
	mib, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return mib
}

func entryNames(a *harness.Archive) string {
	var names []string
	for _, h := range a.Entries {
		names = append(names, h.Name)
	}
	return strings.Join(names, " ")
}

// TestCRICheckpointBadInput checkpoints what the kubelet's checkpoint API
// may be asked to: an unknown container, one that has exited, one a user
// holds paused, and a running one to an export path that cannot be
// written. Each gives a clear CRI error (or, for the paused one, a
// checkpoint), and leaves the container as it was.
func TestCRICheckpointBadInput(t *testing.T) {
	d, cri := startCRIDaemon(t)
	ctx := testContext(t, d)
	dir := t.TempDir()
	checkpoint := func(id, location string) error {
		_, err := cri.Runtime.CheckpointContainer(ctx, &runtime.CheckpointContainerRequest{ContainerId: id, Location: location})
		return err
	}

	t.Run("unknown", func(t *testing.T) {
		err := checkpoint("no-such-container", filepath.Join(dir, "unknown.tar"))
		t.Logf("CRI error: %v", err)
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "no-such-container") {
			t.Errorf("checkpoint of an unknown container: %v, want NotFound naming it", err)
		}
	})

	t.Run("exited", func(t *testing.T) {
		pod := runCRIMemload(t, ctx, d, cri, "ckpt-exited", handlerRuncPath, criAnnotations{})
		if _, err := cri.Runtime.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: pod.ContainerID}); err != nil {
			t.Fatal(err)
		}
		err := checkpoint(pod.ContainerID, filepath.Join(dir, "exited.tar"))
		t.Logf("CRI error: %v", err)
		if err == nil || !strings.Contains(err.Error(), "CONTAINER_EXITED") || !strings.Contains(err.Error(), "only CONTAINER_RUNNING") {
			t.Errorf("checkpoint of an exited container: %v, want an error saying only running containers can be", err)
		}
		requireCRIState(t, ctx, cri, pod.ContainerID, runtime.ContainerState_CONTAINER_EXITED)
		requireNoFile(t, filepath.Join(dir, "exited.tar"))
	})

	t.Run("unwritable-export", func(t *testing.T) {
		pod := runCRIMemload(t, ctx, d, cri, "ckpt-unwritable", handlerRuncPath, criAnnotations{})
		before := queryCRIMemload(t, ctx, cri, pod.ContainerID)
		location := filepath.Join(dir, "no-such-dir", "checkpoint.tar")
		err := checkpoint(pod.ContainerID, location)
		t.Logf("CRI error: %v", err)
		if err == nil || !strings.Contains(err.Error(), location) {
			t.Errorf("checkpoint to %s: %v, want an error naming the path", location, err)
		}
		requireCRIState(t, ctx, cri, pod.ContainerID, runtime.ContainerState_CONTAINER_RUNNING)
		requireCRITaskStatus(t, ctx, d, pod.ContainerID, containerd.Running)
		checkMemoryContinued(t, before, queryCRIMemload(t, ctx, cri, pod.ContainerID))
		// Nor is the checkpoint image the CRI plugin made on the way left
		// in containerd.
		kctx := namespaces.WithNamespace(ctx, harness.CRINamespace)
		if imgs, err := d.Client().ImageService().List(kctx, `labels."containerd.io/checkpoint"==true`); err != nil || len(imgs) > 0 {
			t.Errorf("checkpoint images left behind: %v %v", imgs, err)
		}
	})

	t.Run("paused", func(t *testing.T) {
		pod := runCRIMemload(t, ctx, d, cri, "ckpt-paused", handlerRuncPath, criAnnotations{})
		before := queryCRIMemload(t, ctx, cri, pod.ContainerID)
		task := criTask(t, ctx, d, pod.ContainerID)
		// CRI has no pause; a user pauses through containerd.
		kctx := namespaces.WithNamespace(ctx, harness.CRINamespace)
		if err := task.Pause(kctx); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "paused.tar")
		if err := checkpoint(pod.ContainerID, path); err != nil {
			t.Errorf("checkpoint of a paused container: %v", err)
		} else if a, err := harness.ReadArchive(path); err != nil || a.Report == nil {
			t.Errorf("archive of a paused container: %v, %+v: want one with precopy's report", err, a)
		} else {
			// The report is what the user's Pause decided (the shim
			// pre-copies in every Pause of a running container).
			t.Logf("report: pre-copied %v, skipped %q", a.Report.PreCopied, a.Report.Skipped)
		}
		// The user's pause holds: the checkpoint did not resume it.
		requireCRITaskStatus(t, ctx, d, pod.ContainerID, containerd.Paused)
		if err := task.Resume(kctx); err != nil {
			t.Fatal(err)
		}
		checkMemoryContinued(t, before, queryCRIMemload(t, ctx, cri, pod.ContainerID))
	})
}

// TestCRIPrecopyAnnotationRejected gives a container a bad precopy
// setting through a handler's annotation allow-list: the shim refuses to
// create its task, and the CRI error says which annotation and why.
func TestCRIPrecopyAnnotationRejected(t *testing.T) {
	d, cri := startCRIDaemon(t)
	ctx := testContext(t, d)
	for _, handler := range []string{handlerRuncPath, handlerPrecopy} {
		pod := createCRIMemload(t, ctx, d, cri, "bad-annotation-"+handler, handler,
			criAnnotations{container: map[string]string{settings.AnnotationMode: "sometimes"}})
		_, err := cri.Runtime.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: pod.ContainerID})
		if err == nil || !strings.Contains(err.Error(), settings.AnnotationMode) || !strings.Contains(err.Error(), "sometimes") {
			t.Errorf("%s: start with %s=sometimes: %v, want an error naming the annotation", handler, settings.AnnotationMode, err)
		}
	}
}
