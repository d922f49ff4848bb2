package pin

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/rootfs"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/diff/walking"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/log/logtest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestBindMountWalkingDiff pins a container's layer on containerd's own
// overlayfs snapshotter and takes its rw-layer diff as a checkpoint does
// (rootfs.CreateDiff with the walking differ): the diff is the layer at the
// pin while the container writes on, the layer as it is after the unpin,
// and the snapshot is removable then.
func TestBindMountWalkingDiff(t *testing.T) {
	requireRoot(t)
	ctx := logtest.WithT(context.Background(), t)
	root := t.TempDir()
	sn, err := overlay.NewSnapshotter(filepath.Join(root, "overlayfs"))
	must(t, err)
	defer sn.Close()
	cs, err := local.NewLabeledStore(filepath.Join(root, "content"), labels{})
	must(t, err)
	differ := walking.NewWalkingDiff(cs)

	// An image layer, and a container's writable layer on it, mounted
	// as its running rootfs.
	base, err := sn.Prepare(ctx, "base-active", "")
	must(t, err)
	must(t, mount.WithTempMount(ctx, base, func(root string) error {
		write(t, filepath.Join(root, "deleted"), "deleted", 0o644)
		must(t, os.Mkdir(filepath.Join(root, "dir"), 0o755))
		write(t, filepath.Join(root, "dir", "old"), "old", 0o644)
		return nil
	}))
	must(t, sn.Commit(ctx, "base", "base-active"))
	live, err := sn.Prepare(ctx, "ctr", "base")
	must(t, err)
	rootfsDir := filepath.Join(root, "rootfs")
	must(t, os.Mkdir(rootfsDir, 0o755))
	must(t, mount.All(live, rootfsDir))
	defer mount.UnmountAll(rootfsDir, 0)

	write(t, filepath.Join(rootfsDir, "status"), "at-dump", 0o644)
	must(t, os.Remove(filepath.Join(rootfsDir, "deleted")))
	must(t, os.RemoveAll(filepath.Join(rootfsDir, "dir")))
	must(t, os.Mkdir(filepath.Join(rootfsDir, "dir"), 0o755))

	upper := UpperDir(live[0].Type, live[0].Source, live[0].Options)
	l := &Local{RecordDir: t.TempDir(), Limit: DefaultLimit}
	t.Cleanup(func() { l.Close(ctx) })
	_, err = l.Pin(ctx, upper)
	must(t, err)
	write(t, filepath.Join(rootfsDir, "status"), "after-thaw", 0o644)
	write(t, filepath.Join(rootfsDir, "new"), "new", 0o644)

	got := rwDiff(t, ctx, sn, differ, cs)
	for name, want := range map[string]string{"status": "at-dump", ".wh.deleted": "", "dir/.wh.old": ""} {
		if c, ok := got[name]; !ok || c != want {
			t.Errorf("pinned diff: %s: %q (present %v), want %q", name, c, ok, want)
		}
	}
	if _, ok := got["new"]; ok {
		t.Error("pinned diff holds a file written after the pin")
	}

	must(t, l.Unpin(ctx, upper))
	got = rwDiff(t, ctx, sn, differ, cs)
	if got["status"] != "after-thaw" || got["new"] != "new" {
		t.Errorf("diff after the unpin: %q", got)
	}
	must(t, mount.UnmountAll(rootfsDir, 0))
	must(t, sn.Remove(ctx, "ctr"))
	if _, err := os.Stat(filepath.Dir(upper)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the removed snapshot's dir: %v", err)
	}
}

// rwDiff is the container's rw-layer diff as a checkpoint takes it, as
// a map of entry names to contents.
func rwDiff(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, d diff.Comparer, cs content.Store) map[string]string {
	t.Helper()
	desc, err := rootfs.CreateDiff(ctx, "ctr", sn, d, diff.WithMediaType(ocispec.MediaTypeImageLayer))
	must(t, err)
	ra, err := cs.ReaderAt(ctx, desc)
	must(t, err)
	defer ra.Close()
	entries := map[string]string{}
	tr := tar.NewReader(content.NewReader(ra))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		must(t, err)
		b, err := io.ReadAll(tr)
		must(t, err)
		entries[h.Name] = string(b)
	}
}

// labels is a content store's labels in memory: the differ labels what it
// writes.
type labels map[digest.Digest]map[string]string

func (l labels) Get(d digest.Digest) (map[string]string, error) { return l[d], nil }

func (l labels) Set(d digest.Digest, m map[string]string) error {
	l[d] = m
	return nil
}

func (l labels) Update(d digest.Digest, m map[string]string) (map[string]string, error) {
	if l[d] == nil {
		l[d] = map[string]string{}
	}
	for k, v := range m {
		if v == "" {
			delete(l[d], k)
		} else {
			l[d][k] = v
		}
	}
	return l[d], nil
}
