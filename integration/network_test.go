package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/precopy/precopy/integration/harness"
	"github.com/precopy/precopy/integration/workloads/netload/netproto"
	"github.com/precopy/precopy/precopy"
	"github.com/precopy/precopy/precopy/settings"
	precopyshim "github.com/precopy/precopy/shim"
	"github.com/precopy/precopy/shim/criuaction"
)

// TestNetworkServerCtr checkpoints (with pre-copy rounds where the kernel
// tracks dirty memory) a network server in a network namespace
// of its own (netload: a TCP key-value server on 127.0.0.1, UDP and unix
// echo, and a load generator in the same namespace keeping TCP
// connections, a UDP socket and a unix connection busy) with `ctr c
// checkpoint --task --rw`, and restores it with `ctr c restore --live
// --rw`: the source runs on with its connections, and the restored
// container has loopback up as at the dump, its server answers on
// 127.0.0.1 with its data, and the load generator's connections carried
// on (io.precopy.tcp's default, restore: loopback connections can be).
func TestNetworkServerCtr(t *testing.T) {
	d, ctx, src, before := startNetload(t, "net-ctr-src", lowMinSize, "-mib", "24")
	const ref = "precopy.test/checkpoint:net-ctr"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	checkConnectionsCarriedOn(t, "the checkpointed container", before, queryNetload(t, ctx, src))
	cp, err := harness.ReadCheckpoint(ctx, d.Client(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Report == nil {
		t.Fatal("checkpoint has no precopy report")
	}
	// netload's sockets: the KV listener, 4 connections (both ends in
	// the container), UDP server and client, unix listener and one
	// connection (both ends).
	if n := cp.Report.Network; n == nil || n.TCP != "established" || n.Loopback == nil || !n.Loopback.Up || n.Sockets == nil ||
		n.Sockets.TCPListen < 1 || n.Sockets.TCPConnections < 8 || n.Sockets.UDP < 2 || n.Sockets.Unix < 3 {
		t.Errorf("report's network: %s, want established TCP, loopback up, netload's sockets", networkOf(cp.Report))
	}
	if stack.softDirty && (!cp.Report.PreCopied || len(cp.Report.Rounds) == 0) {
		t.Errorf("a kernel with soft-dirty, yet no pre-copy rounds: %s", cp.Report.Skipped)
	}
	var predicted time.Duration
	if cp.Report.Stop != nil {
		predicted = cp.Report.Stop.PredictedFreeze
	}
	t.Logf("pre-copied %v in %d rounds (%s); final dump frozen %v, predicted %v; CRIU options %q; network %s",
		cp.Report.PreCopied, len(cp.Report.Rounds), cp.Report.Skipped, finalFrozen(cp.Report), predicted, cp.Report.CRIUOptions, networkOf(cp.Report))
	removeContainer(t, d, src.ID())

	restored := restoreCtr(t, ctx, d, "net-ctr-dst", ref)
	requireShim(t, ctx, restored, stack.bins.Path(harness.ShimBinary))
	checkLoopbackUp(t, restored)
	// Its later dumps get the dump options again, not the restore's
	// action script.
	b, err := os.ReadFile(filepath.Join(filepath.Dir(d.RootfsPath(restored.ID())), "precopy-criu.conf"))
	if err != nil || !strings.Contains(string(b), "tcp-established") || strings.Contains(string(b), "action-script") {
		t.Errorf("the restored container's CRIU config: %q (%v), want tcp-established and no action script", b, err)
	}
	after := queryNetload(t, ctx, restored)
	checkSameServer(t, before, after)
	checkConnectionsCarriedOn(t, "the restored container", before, after)
}

// TestNetworkServerStockRestore restores a networked checkpoint taken by
// precopy with containerd's own runc-v2 shim. Stock runc restores into a
// fresh network namespace with loopback down and tells CRIU nothing about
// TCP, so CRIU cannot re-connect even the load generator's UDP socket to
// 127.0.0.1 ("Network is unreachable"): its operator has to bring loopback
// up (an OCI createRuntime hook, which runc runs when CRIU has made the
// namespaces, as nerdctl's CNI set-up does) and choose for the dumped TCP
// connections in CRIU's config (org.criu.config; here tcp-close). Then the
// image restores: the server answers with its data and the load generator
// has reconnected.
func TestNetworkServerStockRestore(t *testing.T) {
	d, ctx, src, before := startNetload(t, "net-stock-src", nil)
	const ref = "precopy.test/checkpoint:net-stock"
	checkpointCtr(t, ctx, d, src.ID(), ref)
	removeContainer(t, d, src.ID())

	config := filepath.Join(t.TempDir(), "criu-runc.conf")
	if err := os.WriteFile(config, []byte("tcp-close\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	loUp := specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c",
		`pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p') && exec nsenter -t "$pid" -n ip link set lo up`}}
	task := restoreWithStockRuncV2(t, ctx, d, "net-stock-dst", ref, withRestoredSpec(func(s *oci.Spec) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations["org.criu.config"] = config
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		s.Hooks.CreateRuntime = append(s.Hooks.CreateRuntime, loUp)
	}))
	checkLoopbackUp(t, task)
	after := queryNetload(t, ctx, task)
	checkSameServer(t, before, after)
	checkConnectionsReset(t, before, after)
}

// TestNetworkUnsupportedSocket checkpoints a server CRIU cannot dump (an
// MPTCP listener, which Go programs get by default from Go 1.24 on): the
// checkpoint fails with CRIU's reason in its error, the container runs on
// with its connections, and nothing is left: no image, no paused task, no
// CRIU.
func TestNetworkUnsupportedSocket(t *testing.T) {
	d, ctx, src, before := startNetload(t, "net-mptcp", nil, "-mptcp")
	const ref = "precopy.test/checkpoint:net-mptcp"
	_, err := d.Ctr(ctx, "containers", "checkpoint", "--task", "--rw", src.ID(), ref)
	if err == nil {
		t.Fatal("checkpoint of a container with an MPTCP socket succeeded")
	}
	if !strings.Contains(err.Error(), "Unsupported proto 262") {
		t.Errorf("checkpoint error does not give CRIU's reason (Unsupported proto 262): %v", err)
	}
	requireStatus(t, ctx, src, containerd.Running)
	checkConnectionsCarriedOn(t, "the container whose checkpoint failed", before, queryNetload(t, ctx, src))
	if _, err := d.Client().GetImage(ctx, ref); !errdefs.IsNotFound(err) {
		t.Errorf("a failed checkpoint left image %s (%v)", ref, err)
	}
	bundle := filepath.Dir(d.RootfsPath(src.ID()))
	if _, err := os.Stat(filepath.Join(bundle, "checkpoint-work")); !os.IsNotExist(err) {
		t.Errorf("a failed checkpoint left CRIU's work dir in the bundle (%v)", err)
	}
	requireNoCRIU(t, d)
}

// TestNetworkTCPRefuse: with io.precopy.tcp=refuse precopy tells CRIU
// nothing of TCP connections, as stock runc-v2: the checkpoint of a
// server with clients connected fails with CRIU's reason, and the server
// runs on.
func TestNetworkTCPRefuse(t *testing.T) {
	d, ctx, src, before := startNetload(t, "net-refuse", map[string]string{settings.AnnotationTCP: string(settings.TCPRefuse)})
	_, err := d.Ctr(ctx, "containers", "checkpoint", "--task", "--rw", src.ID(), "precopy.test/checkpoint:net-refuse")
	if err == nil || !strings.Contains(err.Error(), "Connected TCP socket") {
		t.Fatalf("checkpoint with io.precopy.tcp=refuse: %v; want CRIU's refusal of the connections", err)
	}
	requireStatus(t, ctx, src, containerd.Running)
	checkConnectionsCarriedOn(t, "the container whose checkpoint was refused", before, queryNetload(t, ctx, src))
}

// startNetload starts netload with args in a new container on precopy's
// runtime, with a network namespace of its own (containerd's default
// spec) whose loopback netload brings up (CAP_NET_ADMIN), as a CNI
// loopback plugin does for pods, and waits until its servers answer. It
// returns the test's daemon and context, the task, and the task's first
// answer after its load generator has been busy for a moment.
func startNetload(t *testing.T, id string, annotations map[string]string, args ...string) (*harness.Daemon, context.Context, containerd.Task, netproto.Query) {
	t.Helper()
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	task, err := newMemloadTask(t, d, id, precopyshim.Runtime, []oci.SpecOpts{
		oci.WithProcessArgs(append([]string{"/" + harness.NetloadBinary, "-lo-up"}, args...)...),
		oci.WithAddedCapabilities([]string{"CAP_NET_ADMIN"}),
		oci.WithAnnotations(annotations),
	})
	if err != nil {
		t.Fatalf("create task %s: %v", id, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start task %s: %v", id, err)
	}
	// The query waits for the server.
	queryNetload(t, ctx, task)
	time.Sleep(200 * time.Millisecond)
	return d, ctx, task, queryNetload(t, ctx, task)
}

// queryNetload runs `netload query` in task's container: it reaches each
// server as a new client on 127.0.0.1 and verifies the server's data.
func queryNetload(t *testing.T, ctx context.Context, task containerd.Task) netproto.Query {
	t.Helper()
	var q netproto.Query
	out := execNetload(t, ctx, task, "query", "-timeout", "30s")
	if err := json.Unmarshal(out, &q); err != nil {
		t.Fatalf("netload query in %s: %v: %q", task.ID(), err, out)
	}
	if q.SeedKeysVerified != netproto.SeedKeys || !q.UDPEcho || !q.UnixEcho {
		t.Fatalf("netload query in %s: %+v", task.ID(), q)
	}
	return q
}

// execNetload runs netload with args in task's container and returns its
// standard output; a non-zero exit fails t.
func execNetload(t *testing.T, ctx context.Context, task containerd.Task, args ...string) []byte {
	t.Helper()
	spec, err := task.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = append([]string{"/" + harness.NetloadBinary}, args...)
	var stdout, stderr bytes.Buffer
	p, err := task.Exec(ctx, fmt.Sprintf("netload-%d", time.Now().UnixNano()), &pspec, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	if err != nil {
		t.Fatalf("exec netload %s in %s: %v", args[0], task.ID(), err)
	}
	defer p.Delete(ctx)
	statusC, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start netload %s in %s: %v", args[0], task.ID(), err)
	}
	status := <-statusC
	// Wait returns at the process exit; the FIFOs may still be draining
	// (Delete cancels the copy).
	p.IO().Wait()
	p.Delete(ctx)
	if code, _, _ := status.Result(); code != 0 {
		t.Fatalf("netload %s in %s exited %d: %s", args[0], task.ID(), code, stderr.String())
	}
	return stdout.Bytes()
}

// loopback reads lo in task's network namespace.
func loopback(t *testing.T, task containerd.Task) precopy.Loopback {
	t.Helper()
	lo, err := criuaction.ReadLoopback(fmt.Sprintf("/proc/%d/ns/net", task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	return lo
}

// checkLoopbackUp checks that a restored container's loopback is up with
// the addresses netload's had at the dump.
func checkLoopbackUp(t *testing.T, task containerd.Task) {
	t.Helper()
	lo := loopback(t, task)
	if !lo.Up || !slices.Contains(lo.Addrs, "127.0.0.1/8") || !slices.Contains(lo.Addrs, "::1/128") {
		t.Errorf("restored container's loopback is %s, want up with 127.0.0.1/8 and ::1/128 as at the dump", lo)
	}
}

// checkSameServer checks that after is the process image before was, its
// data intact (the query verified every seed key) and its load generator
// busy since.
func checkSameServer(t *testing.T, before, after netproto.Query) {
	t.Helper()
	if !after.Status.StartedAt.Equal(before.Status.StartedAt) || after.Status.Seed != before.Status.Seed {
		t.Errorf("restored server started at %v with seed %d, the checkpointed one at %v with %d: not the same process image",
			after.Status.StartedAt, after.Status.Seed, before.Status.StartedAt, before.Status.Seed)
	}
	if after.Status.Ops() <= before.Status.Ops() {
		t.Errorf("load generator's round trips did not go on: %d before, %d after", before.Status.Ops(), after.Status.Ops())
	}
	for _, c := range after.Status.Conns {
		if c.Mismatches != 0 {
			t.Errorf("load generator connection %d read back %d values it did not write", c.ID, c.Mismatches)
		}
	}
}

// checkConnectionsCarriedOn checks that the load generator's TCP and unix
// connections of before are the ones of after: none was made again.
func checkConnectionsCarriedOn(t *testing.T, what string, before, after netproto.Query) {
	t.Helper()
	if after.Status.Dials() != before.Status.Dials() || after.Status.Ops() <= before.Status.Ops() {
		t.Errorf("%s: load generator dialled %d times (%d before), %d round trips (%d before): its connections did not carry on; last errors: %s",
			what, after.Status.Dials(), before.Status.Dials(), after.Status.Ops(), before.Status.Ops(), lastErrors(after.Status))
	}
}

// checkConnectionsReset checks that each of the load generator's TCP
// connections was reset and made again, and works.
func checkConnectionsReset(t *testing.T, before, after netproto.Query) {
	t.Helper()
	for i, c := range after.Status.Conns {
		if c.Dials <= before.Status.Conns[i].Dials {
			t.Errorf("load generator TCP connection %d dialled %d times, %d before: it was not reset", c.ID, c.Dials, before.Status.Conns[i].Dials)
		}
	}
}

func lastErrors(st netproto.Status) string {
	var errs []string
	for _, c := range append(st.Conns, st.Unix) {
		if c.LastError != "" {
			errs = append(errs, c.LastError)
		}
	}
	return strings.Join(errs, "; ")
}

// networkOf is a report's network account, for messages.
func networkOf(r *precopy.Report) string {
	b, _ := json.Marshal(r.Network)
	return string(b)
}

// withRestoredSpec changes the spec of a container being restored, which
// containerd.WithRestoreSpec took from the checkpoint.
func withRestoredSpec(change func(*oci.Spec)) containerd.RestoreOpts {
	return func(context.Context, string, *containerd.Client, containerd.Image, *ocispec.Index) containerd.NewContainerOpts {
		return func(ctx context.Context, client *containerd.Client, ctr *containers.Container) error {
			v, err := typeurl.UnmarshalAny(ctr.Spec)
			if err != nil {
				return err
			}
			spec, ok := v.(*oci.Spec)
			if !ok {
				return fmt.Errorf("restored spec is a %T", v)
			}
			change(spec)
			return containerd.WithSpec(spec)(ctx, client, ctr)
		}
	}
}

// requireNoCRIU fails t if a CRIU process works for d.
func requireNoCRIU(t *testing.T, d *harness.Daemon) {
	t.Helper()
	pids, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err == nil && bytes.HasPrefix(b, []byte("criu")) && bytes.Contains(b, []byte(d.Dir)) {
			t.Errorf("CRIU left running: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func finalFrozen(r *precopy.Report) time.Duration {
	if r.Final == nil {
		return 0
	}
	return r.Final.Freeze()
}

// TestNetworkServerClientClose checkpoints netload through containerd's Go
// client (Container.Checkpoint: Pause, Checkpoint with the rw layer,
// Resume) and restores it through the client on precopy's runtime, with
// io.precopy.tcp=close: the connections carry on in the checkpointed
// container, and in the restored one they were reset and the load
// generator reconnected, to the server answering on 127.0.0.1 with its
// data.
func TestNetworkServerClientClose(t *testing.T) {
	d, ctx, src, before := startNetload(t, "net-client-src", map[string]string{settings.AnnotationTCP: string(settings.TCPClose)})
	ctr, err := d.Client().LoadContainer(ctx, src.ID())
	if err != nil {
		t.Fatal(err)
	}
	const ref = "precopy.test/checkpoint:net-client"
	checkpoint, err := ctr.Checkpoint(ctx, ref, containerd.WithCheckpointTask, containerd.WithCheckpointRW)
	if err != nil {
		t.Fatalf("checkpoint: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	requireStatus(t, ctx, src, containerd.Running)
	checkConnectionsCarriedOn(t, "the checkpointed container", before, queryNetload(t, ctx, src))
	removeContainer(t, d, src.ID())

	const id = "net-client-dst"
	t.Cleanup(func() { removeContainer(t, d, id) })
	restoredCtr, err := d.Client().Restore(ctx, id, checkpoint,
		containerd.WithRestoreImage, containerd.WithRestoreSpec, containerd.WithRestoreRuntime, containerd.WithRestoreRW)
	if err != nil {
		t.Fatalf("restore container: %v", err)
	}
	restored, err := restoredCtr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, os.Stderr, os.Stderr)), containerd.WithTaskCheckpoint(checkpoint))
	if err != nil {
		t.Fatalf("restore task: %v; containerd log:\n%s", err, d.LogTail(30))
	}
	if err := restored.Start(ctx); err != nil {
		t.Fatalf("start restored task: %v", err)
	}
	requireShim(t, ctx, restored, stack.bins.Path(harness.ShimBinary))
	checkLoopbackUp(t, restored)
	after := queryNetload(t, ctx, restored)
	checkSameServer(t, before, after)
	checkConnectionsReset(t, before, after)
}
