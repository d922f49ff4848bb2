package memstore

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestConcurrentUse writes, commits, reads, lists and deletes from many
// goroutines at once; run with -race. Half the writers write the same
// content under different refs, so commits also race to create one blob.
func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, WithLimit(64<<20))
	shared := bytes.Repeat([]byte("shared"), 100_000)

	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			data := shared
			if i%2 == 1 {
				data = bytes.Repeat([]byte{byte(i)}, 3*chunkSize/2)
			}
			desc := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}
			if err := content.WriteBlob(ctx, s, fmt.Sprintf("ref-%d", i), bytes.NewReader(data), desc); err != nil {
				t.Error(err)
				return
			}
			got, err := content.ReadBlob(ctx, s, desc)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("read back %s: %v", desc.Digest, err)
			}
		})
		wg.Go(func() {
			s.ListStatuses(ctx)
			s.Metrics()
		})
	}
	wg.Wait()
	if m := s.Metrics(); m.Blobs != 9 || m.Ingests != 0 || m.IngestBytes != 0 {
		t.Fatalf("after the writes: %+v", m)
	}

	// Walk and delete from its callback, as containerd's garbage
	// collector does, while others read.
	for range 4 {
		wg.Go(func() {
			s.Walk(ctx, func(info content.Info) error {
				s.Info(ctx, info.Digest)
				return nil
			})
		})
	}
	if err := s.Walk(ctx, func(info content.Info) error { return s.Delete(ctx, info.Digest) }); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if m := s.Metrics(); m.Blobs != 0 || m.UsedBytes != 0 {
		t.Fatalf("after deleting everything: %+v", m)
	}
}

// TestWalkFilters checks that Walk and ListStatuses take containerd's
// filter syntax.
func TestWalkFilters(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a := []byte("a")
	desc := ocispec.Descriptor{Size: 1, Digest: digest.FromBytes(a)}
	if err := content.WriteBlob(ctx, s, "a", bytes.NewReader(a), desc, content.WithLabels(map[string]string{"precopy/kind": "checkpoint"})); err != nil {
		t.Fatal(err)
	}
	commitBlob(t, s, "b", []byte("b"))
	for _, ref := range []string{"layer-1", "layer-2", "config"} {
		openWriter(t, s, ref, ocispec.Descriptor{}).Close()
	}

	var walked []digest.Digest
	if err := s.Walk(ctx, func(info content.Info) error {
		walked = append(walked, info.Digest)
		return nil
	}, `labels."precopy/kind"==checkpoint`); err != nil {
		t.Fatal(err)
	}
	if len(walked) != 1 || walked[0] != desc.Digest {
		t.Errorf("walk by label: %v, want [%s]", walked, desc.Digest)
	}

	statuses, err := s.ListStatuses(ctx, `ref~="^layer-"`)
	if err != nil {
		t.Fatal(err)
	}
	if len(statuses) != 2 || statuses[0].Ref != "layer-1" || statuses[1].Ref != "layer-2" {
		t.Errorf("statuses by ref: %+v", statuses)
	}
	if _, err := s.ListStatuses(ctx, "ref=="); err == nil {
		t.Error("bad filter accepted")
	}
}
