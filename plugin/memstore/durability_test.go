package memstore

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// recorder is an Observer that notes what it is told.
type recorder struct{ events []string }

func (r *recorder) Committed(info content.Info, data content.ReaderAt) {
	r.events = append(r.events, fmt.Sprintf("commit %s %d", info.Digest, data.Size()))
}
func (r *recorder) Deleted(d digest.Digest) { r.events = append(r.events, "delete "+d.String()) }
func (r *recorder) Updated(info content.Info) {
	r.events = append(r.events, fmt.Sprintf("update %s %v", info.Digest, info.Labels))
}

func TestObserverSeesChangesInOrder(t *testing.T) {
	ctx := context.Background()
	var rec recorder
	s := newStore(t, WithObserver(&rec))
	d := commitBlob(t, s, "a", []byte("abc"))
	if _, err := s.Update(ctx, content.Info{Digest: d, Labels: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	want := []string{"commit " + d.String() + " 3", "update " + d.String() + " map[k:v]", "delete " + d.String()}
	if strings.Join(rec.events, "\n") != strings.Join(want, "\n") {
		t.Errorf("observer heard\n%s\nwant\n%s", strings.Join(rec.events, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadVerifies(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("recovered"), 200_000) // spans chunks
	info := content.Info{Digest: digest.FromBytes(data), Size: int64(len(data)), Labels: map[string]string{"k": "v"}}

	var rec recorder
	s := newStore(t, WithLimit(int64(len(data))), WithObserver(&rec))
	for name, tc := range map[string]struct {
		info content.Info
		r    []byte
	}{
		"cut short":  {info, data[:len(data)-1]},
		"too long":   {info, append(bytes.Clone(data), 'x')},
		"other data": {info, bytes.Repeat([]byte("corrupted"), 200_000)},
	} {
		if err := s.Load(ctx, tc.info, bytes.NewReader(tc.r)); !errdefs.IsDataLoss(err) {
			t.Errorf("%s: %v, want data loss", name, err)
		}
	}
	checkUsed(t, s, 0)
	if len(rec.events) != 0 {
		t.Errorf("refused loads told the observer: %v", rec.events)
	}

	if err := s.Load(ctx, info, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, s, info.Digest, data)
	checkUsed(t, s, info.Size)
	if got, _ := s.Info(ctx, info.Digest); got.Labels["k"] != "v" {
		t.Errorf("labels %v", got.Labels)
	}
	if len(rec.events) != 1 {
		t.Errorf("observer heard %v, want the load as a commit", rec.events)
	}
	if err := s.Load(ctx, info, bytes.NewReader(data)); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second load: %v, want already exists", err)
	}
	more := []byte("no room")
	if err := s.Load(ctx, content.Info{Digest: digest.FromBytes(more), Size: int64(len(more))}, bytes.NewReader(more)); !errdefs.IsResourceExhausted(err) {
		t.Errorf("load over the limit: %v, want resource exhausted", err)
	}
}

func TestMarkLost(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := []byte("gone")
	d := digest.FromBytes(data)
	s.MarkLost([]digest.Digest{d}, "lost in a test")
	_, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "lost in a test") {
		t.Fatalf("reading lost content: %v", err)
	}
	commitBlob(t, s, "again", data)
	checkBlob(t, s, d, data)
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) || strings.Contains(err.Error(), "lost") {
		t.Errorf("content deleted after being committed again: %v, want plain not found", err)
	}
}
