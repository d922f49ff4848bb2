package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/integration/harness"
	precopyshim "github.com/precopy/precopy/shim"
)

// TestRestoreHostileImage restores, with `ctr c restore`, checkpoint
// images whose CRIU tar was altered the way a hostile image from another
// machine could be (containerd extracts symlinks as they are): a pages
// file that is a symlink to a file of the host, and an absolute parent
// link. The shim refuses each before runc or CRIU sees it, with an
// invalid-argument error naming the file; no task is left, no CRIU ran,
// and the file the link named is untouched. The unaltered image restores.
func TestRestoreHostileImage(t *testing.T) {
	requireStack(t)
	d := stack.daemon
	ctx := testContext(t, d)
	// Content the test writes is kept by a lease until it ends.
	ctx, done, err := d.Client().WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { done(context.WithoutCancel(ctx)) })

	src := runMemload(t, d, "hostile-src", precopyshim.Runtime)
	before := queryMemload(t, ctx, src)
	const ref = "precopy.test/checkpoint:hostile-base"
	removeImageAtEnd(t, d, ref)
	checkpointCtr(t, ctx, d, src.ID(), ref)
	removeContainer(t, d, src.ID())

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("host secret\n"), 1<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	for _, tc := range []struct {
		name, file string
		alter      func(h *tar.Header, body []byte) []tarEntry
	}{
		{"symlinked-pages", "pages-1.img", func(h *tar.Header, body []byte) []tarEntry {
			if strings.TrimPrefix(h.Name, "./") != "pages-1.img" {
				return []tarEntry{{h, body}}
			}
			return []tarEntry{{&tar.Header{Name: h.Name, Typeflag: tar.TypeSymlink, Linkname: secret, Mode: 0o777}, nil}}
		}},
		{"absolute-parent", "parent", func(h *tar.Header, body []byte) []tarEntry {
			if strings.TrimPrefix(h.Name, "./") != "inventory.img" {
				return []tarEntry{{h, body}}
			}
			return []tarEntry{{h, body}, {&tar.Header{Name: "parent", Typeflag: tar.TypeSymlink, Linkname: outside, Mode: 0o777}, nil}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := "precopy.test/checkpoint:hostile-" + tc.name
			alterCheckpoint(t, ctx, d, ref, bad, tc.alter)
			id := "hostile-" + tc.name
			t.Cleanup(func() { removeContainer(t, d, id) })
			_, err := d.Ctr(ctx, "containers", "restore", "--live", "--rw", id, bad)
			if err == nil || !strings.Contains(err.Error(), tc.file) || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "invalid argument") {
				t.Fatalf("restore of an image with a hostile %s: %v, want a refusal naming it", tc.file, err)
			}
			t.Logf("refused: %v", err)
			if ctr, err := d.Client().LoadContainer(ctx, id); err == nil {
				if _, err := ctr.Task(ctx, nil); !errdefs.IsNotFound(err) {
					t.Errorf("a task is left after the refused restore: %v", err)
				}
			}
			if pids := criuPids(); len(pids) != 0 {
				t.Errorf("CRIU processes after a refused restore: %v", pids)
			}
		})
	}
	if b, err := os.ReadFile(secret); err != nil || !bytes.Equal(b, bytes.Repeat([]byte("host secret\n"), 1<<10)) {
		t.Errorf("the file the hostile link named changed: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("the dir the hostile parent link named holds %d entries", len(entries))
	}
	restored := restoreCtr(t, ctx, d, "hostile-control", ref)
	checkMemoryContinued(t, before, queryMemload(t, ctx, restored))
}

// tarEntry is one entry of a tar: its header and, for a file, its bytes.
type tarEntry struct {
	h    *tar.Header
	body []byte
}

// alterCheckpoint makes checkpoint image newRef from ref, its CRIU tar's
// entries passed through alter, everything else shared with ref.
func alterCheckpoint(t *testing.T, ctx context.Context, d *harness.Daemon, ref, newRef string, alter func(*tar.Header, []byte) []tarEntry) {
	t.Helper()
	c := d.Client()
	store := c.ContentStore()
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := content.ReadBlob(ctx, store, img.Target())
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		t.Fatal(err)
	}
	found := false
	for i, m := range index.Manifests {
		if m.MediaType != images.MediaTypeContainerd1Checkpoint {
			continue
		}
		found = true
		blob, err := content.ReadBlob(ctx, store, m)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		tw := tar.NewWriter(&out)
		tr := tar.NewReader(bytes.NewReader(blob))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range alter(h, body) {
				if e.h.Typeflag == tar.TypeReg {
					e.h.Size = int64(len(e.body))
				}
				if err := tw.WriteHeader(e.h); err != nil {
					t.Fatal(err)
				}
				if _, err := tw.Write(e.body); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		index.Manifests[i] = writeBlob(t, ctx, store, m, out.Bytes())
	}
	if !found {
		t.Fatalf("checkpoint %s has no CRIU tar", ref)
	}
	ib, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	target := writeBlob(t, ctx, store, img.Target(), ib)
	if _, err := c.ImageService().Create(ctx, images.Image{Name: newRef, Target: target}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ImageService().Delete(context.WithoutCancel(ctx), newRef) })
}

// writeBlob writes b into store as a blob like desc (media type,
// platform, annotations) and returns its descriptor.
func writeBlob(t *testing.T, ctx context.Context, store content.Store, like ocispec.Descriptor, b []byte) ocispec.Descriptor {
	t.Helper()
	desc := like
	desc.Digest, desc.Size = digest.FromBytes(b), int64(len(b))
	if err := content.WriteBlob(ctx, store, "hostile-"+desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}
