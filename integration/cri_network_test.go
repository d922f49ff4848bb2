package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workloads/netload/netproto"
	"github.com/precopy/precopy/shim/criuaction"
)

// TestCRICheckpointNetworkServer checkpoints netload (a TCP key-value
// server with a load generator holding connections, UDP and unix sockets)
// in a pod with a network namespace of its own through the CRI API, as the
// kubelet does, which never asks for established TCP connections: the
// checkpoint works, the container runs on with its connections, and the
// archive keeps its loopback. The archive is then restored with runc into
// a new network namespace (CRIU dumped the pod's as external: a restore
// must join one, as a new pod's), with loopback down, and with precopy's
// shim as CRIU's action script and tcp-established in CRIU's config (what
// precopy's shim gives a restore of its own): loopback comes back before
// the sockets, and the server answers on 127.0.0.1 with its data and its
// connections.
func TestCRICheckpointNetworkServer(t *testing.T) {
	d, cri, ctx, pod := startNetworkedCRIPod(t, harness.MemloadPodSpec{Name: "net-server", Command: []string{"/" + harness.NetloadBinary}})
	queryCRINetload(t, ctx, cri, pod.ContainerID)
	time.Sleep(200 * time.Millisecond)
	before := queryCRINetload(t, ctx, cri, pod.ContainerID)

	dir := t.TempDir()
	archive := filepath.Join(dir, "net-server.tar")
	if _, err := cri.Runtime.CheckpointContainer(ctx, &runtime.CheckpointContainerRequest{
		ContainerId: pod.ContainerID, Location: archive,
	}); err != nil {
		t.Fatalf("CRI CheckpointContainer: %v", err)
	}
	requireCRIState(t, ctx, cri, pod.ContainerID, runtime.ContainerState_CONTAINER_RUNNING)
	checkConnectionsCarriedOn(t, "the checkpointed container", before, queryCRINetload(t, ctx, cri, pod.ContainerID))
	a, err := harness.ReadArchive(archive)
	if err != nil {
		t.Fatal(err)
	}
	if a.Report == nil || a.Report.Network == nil || a.Report.Network.Loopback == nil || !a.Report.Network.Loopback.Up {
		t.Errorf("the archive's report does not record loopback up: %v", a.Report)
	}
	if _, err := cri.Runtime.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: pod.ContainerID}); err != nil {
		t.Fatal(err)
	}

	config := filepath.Join(dir, "criu-restore.conf")
	if err := os.WriteFile(config, fmt.Appendf(nil, "tcp-established\naction-script %s\n", stack.bins.Path(harness.ShimBinary)), 0o644); err != nil {
		t.Fatal(err)
	}
	netns := newNetns(t)
	restored, err := harness.RestoreArchive(ctx, d, archive, "net-restored", filepath.Join(dir, "restore"), d.CRICgroupParent(), stack.criuEnv,
		func(s *specs.Spec) {
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations["org.criu.config"] = config
			for i, ns := range s.Linux.Namespaces {
				if ns.Type == specs.NetworkNamespace {
					s.Linux.Namespaces[i].Path = netns
				}
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restored.Remove(context.Background()); err != nil {
			t.Errorf("remove restored container: %v", err)
		}
	})
	out, err := restored.Exec(ctx, "/"+harness.NetloadBinary, "query", "-timeout", "30s")
	if err != nil {
		t.Fatalf("netload query in the restored container (its server on 127.0.0.1): %v", err)
	}
	var after netproto.Query
	if err := json.Unmarshal(out, &after); err != nil {
		t.Fatalf("netload query in the restored container: %v: %q", err, out)
	}
	checkSameServer(t, before, after)
	checkConnectionsCarriedOn(t, "the container runc restored from the archive", before, after)
	if lo, err := criuaction.ReadLoopback(netns); err != nil || !lo.Up {
		t.Errorf("loopback of the restored container: %s (%v), want up", lo, err)
	}
}

// newNetns makes a network namespace, held by a process of its own until
// t ends, and returns its path; its loopback is down. (Not `ip netns add`:
// it makes /run/netns a shared bind mount of itself, over the CRI plugin's
// pod namespaces there, which then cannot be removed.)
func newNetns(t *testing.T) string {
	t.Helper()
	holder := exec.Command("unshare", "--net", "sleep", "infinity")
	if err := holder.Start(); err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	path := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)
	// unshare execs sleep once the namespace is made.
	for {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", holder.Process.Pid)); strings.HasSuffix(exe, "/sleep") {
			return path
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// queryCRINetload runs `netload query` in CRI container id through
// ExecSync.
func queryCRINetload(t *testing.T, ctx context.Context, cri *harness.CRIClient, id string) netproto.Query {
	t.Helper()
	resp, err := cri.Runtime.ExecSync(ctx, &runtime.ExecSyncRequest{
		ContainerId: id, Cmd: []string{"/" + harness.NetloadBinary, "query", "-timeout", "30s"}, Timeout: 120,
	})
	if err != nil {
		t.Fatalf("exec netload query in %s: %v", id, err)
	}
	if resp.ExitCode != 0 {
		t.Fatalf("netload query in %s exited %d: %s", id, resp.ExitCode, resp.Stderr)
	}
	var q netproto.Query
	if err := json.Unmarshal(resp.Stdout, &q); err != nil {
		t.Fatalf("netload query in %s: %v: %q", id, err, resp.Stdout)
	}
	return q
}
