package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workload"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
)

// The CRI tests' runtime handlers: precopy's two install paths for
// Kubernetes.
const (
	// handlerRuncPath keeps runtime type io.containerd.runc.v2, for which
	// the CRI plugin sends runc's checkpoint options, and names precopy's
	// shim as runtime_path.
	handlerRuncPath = "precopy-runc"
	// handlerPrecopy is runtime type io.containerd.precopy.v1: containerd
	// finds the shim on its PATH, and the CRI plugin sends no checkpoint
	// options.
	handlerPrecopy = "precopy"
)

var criDaemons atomic.Int32

// startCRIDaemon starts a private containerd with the CRI plugin, both
// handlers, and the pause and memload images in CRI's namespace; it is
// torn down when t ends.
func startCRIDaemon(t *testing.T) (*harness.Daemon, *harness.CRIClient) {
	t.Helper()
	requireStack(t)
	ctx := context.Background()
	annotations := []string{settings.AnnotationPrefix + "*"}
	d, err := harness.StartDaemon(ctx, harness.Options{
		ShimDirs:  []string{stack.bins.Dir},
		Namespace: fmt.Sprintf("%s-cri%d", stack.daemon.Namespace, criDaemons.Add(1)),
		Env:       stack.criuEnv,
		CRI: &harness.CRIOptions{Handlers: []harness.CRIHandler{
			{Name: handlerRuncPath, RuntimeType: precopyshim.RuncRuntime, RuntimePath: stack.bins.Path(harness.ShimBinary),
				RuncOptions: true, Annotations: annotations},
			{Name: handlerPrecopy, RuntimeType: precopyshim.Runtime, Annotations: annotations},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (%s) ends:\n%s", d.LogPath, d.LogTail(60))
		}
		if err := d.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	if err := harness.ImportCRIImages(ctx, d, stack.bins); err != nil {
		t.Fatal(err)
	}
	cri, err := d.CRI()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cri.Close() })
	return d, cri
}

// criPod is a pod sandbox with one memload container (see
// harness.MemloadPod).
type criPod = harness.MemloadPod

// criAnnotations are annotations on a pod and on its container; the
// handlers pass io.precopy.* of both to the shim.
type criAnnotations struct{ pod, container map[string]string }

// runCRIMemload runs memload in a new pod on handler and waits until it
// reports; the pod goes when t ends.
func runCRIMemload(t *testing.T, ctx context.Context, d *harness.Daemon, cri *harness.CRIClient, name, handler string, a criAnnotations, args ...string) criPod {
	t.Helper()
	pod := startCRIPod(t, ctx, d, cri, memloadPodSpec(t, name, handler, a, args))
	if err := d.WaitCRIMemload(ctx, pod.ContainerID); err != nil {
		t.Fatal(err)
	}
	return pod
}

// createCRIMemload runs a pod and creates (not starts) its memload
// container; the pod goes when t ends.
func createCRIMemload(t *testing.T, ctx context.Context, d *harness.Daemon, cri *harness.CRIClient, name, handler string, a criAnnotations, args ...string) criPod {
	t.Helper()
	return createCRIPod(t, ctx, d, cri, memloadPodSpec(t, name, handler, a, args))
}

// memloadPodSpec is a pod on handler whose container runs memload with
// args (memloadArgs if none).
func memloadPodSpec(t *testing.T, name, handler string, a criAnnotations, args []string) harness.MemloadPodSpec {
	if len(args) == 0 {
		args = memloadArgs
	}
	return harness.MemloadPodSpec{
		Name: name, Handler: handler, PodAnnotations: a.pod, ContainerAnnotations: a.container,
		Args: args, LogDir: t.TempDir(),
	}
}

// createCRIPod runs the pod spec describes and creates (not starts) its
// container; the pod goes when t ends.
func createCRIPod(t *testing.T, ctx context.Context, d *harness.Daemon, cri *harness.CRIClient, spec harness.MemloadPodSpec) criPod {
	t.Helper()
	pod, err := d.CreateMemloadPod(ctx, cri, spec)
	if pod.ID != "" {
		t.Cleanup(func() { removeCRIPod(t, cri, pod.ID) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// startCRIPod runs the pod spec describes and starts its container; the
// pod goes when t ends.
func startCRIPod(t *testing.T, ctx context.Context, d *harness.Daemon, cri *harness.CRIClient, spec harness.MemloadPodSpec) criPod {
	t.Helper()
	pod := createCRIPod(t, ctx, d, cri, spec)
	if _, err := cri.Runtime.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: pod.ContainerID}); err != nil {
		t.Fatalf("start container %s: %v", spec.Name, err)
	}
	return pod
}

// startNetworkedCRIPod starts a CRI daemon and in it the pod spec
// describes, with a network namespace of its own (t is skipped where none
// can be made), on install path (a), its container pre-copied from 16 MiB
// on (lowMinSize) and started.
func startNetworkedCRIPod(t *testing.T, spec harness.MemloadPodSpec) (*harness.Daemon, *harness.CRIClient, context.Context, criPod) {
	t.Helper()
	if err := harness.CanMakePodNetwork(); err != nil {
		t.Skipf("no pod network here: %v", err)
	}
	d, cri := startCRIDaemon(t)
	ctx := testContext(t, d)
	spec.Handler, spec.ContainerAnnotations, spec.LogDir, spec.PodNetwork = handlerRuncPath, lowMinSize, t.TempDir(), true
	return d, cri, ctx, startCRIPod(t, ctx, d, cri, spec)
}

// removeCRIPod stops and removes a pod with its containers.
func removeCRIPod(t *testing.T, cri *harness.CRIClient, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cri.RemovePod(ctx, id); err != nil {
		t.Error(err)
	}
}

// queryCRIMemload has memload verify its memory, through CRI's ExecSync.
func queryCRIMemload(t *testing.T, ctx context.Context, cri *harness.CRIClient, id string) workload.Status {
	t.Helper()
	st, err := cri.CRIMemload(ctx, id, "query")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// criContainerState is the container's state as CRI reports it.
func criContainerState(t *testing.T, ctx context.Context, cri *harness.CRIClient, id string) runtime.ContainerState {
	t.Helper()
	st, err := cri.Runtime.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("status of container %s: %v", id, err)
	}
	return st.GetStatus().GetState()
}

func requireCRIState(t *testing.T, ctx context.Context, cri *harness.CRIClient, id string, want runtime.ContainerState) {
	t.Helper()
	if got := criContainerState(t, ctx, cri, id); got != want {
		t.Fatalf("container %s is %s, want %s", id, got, want)
	}
}

// checkpointctl runs checkpointctl, the tool Kubernetes users read
// checkpoint archives with, and returns its standard output.
func checkpointctl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "checkpointctl", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("checkpointctl %s: %v: %s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

func mustContain(t *testing.T, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s does not mention %q:\n%s", what, w, s)
		}
	}
}

// criTask is the containerd task of CRI container id.
func criTask(t *testing.T, ctx context.Context, d *harness.Daemon, id string) containerd.Task {
	t.Helper()
	return loadTask(t, namespaces.WithNamespace(ctx, harness.CRINamespace), d, id)
}

// requireCRITaskStatus checks the status of CRI container id's task,
// which tells paused from running (CRI does not).
func requireCRITaskStatus(t *testing.T, ctx context.Context, d *harness.Daemon, id string, want containerd.ProcessStatus) {
	t.Helper()
	st, err := criTask(t, ctx, d, id).Status(namespaces.WithNamespace(ctx, harness.CRINamespace))
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != want {
		t.Fatalf("task of %s is %s, want %s", id, st.Status, want)
	}
}

func requireNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want it not to exist", path, err)
	}
}
