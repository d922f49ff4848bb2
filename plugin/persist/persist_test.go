package persist

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/plugin/memstore"
)

// storeOn opens dir and a store that writes behind to it, and recovers
// what dir holds into the store.
func storeOn(t *testing.T, dir string, opts ...memstore.Option) (*memstore.Store, *Dir, Recovery) {
	t.Helper()
	ctx := logtest.WithT(context.Background(), t)
	d, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	s, err := memstore.New(append(opts, memstore.WithObserver(d))...)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := d.Recover(ctx, s.Load)
	if err != nil {
		t.Fatal(err)
	}
	return s, d, rec
}

func commit(t *testing.T, s *memstore.Store, data []byte) digest.Digest {
	t.Helper()
	desc := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data)}
	if err := content.WriteBlob(context.Background(), s, desc.Digest.String(), bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

func read(s *memstore.Store, dgst digest.Digest) ([]byte, error) {
	return content.ReadBlob(context.Background(), s, ocispec.Descriptor{Digest: dgst})
}

// TestWriteBehindAndRecover commits, relabels and deletes blobs, lets the
// writer catch up, and recovers them into a new store.
func TestWriteBehindAndRecover(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "persist")
	s, d, rec := storeOn(t, dir)
	if len(rec.Recovered) != 0 || len(rec.Refused) != 0 {
		t.Fatalf("recovery of an empty dir: %+v", rec)
	}
	kept := bytes.Repeat([]byte("kept"), 1<<18) // spans chunks
	keptDigest := commit(t, s, kept)
	if _, err := s.Update(ctx, content.Info{Digest: keptDigest, Labels: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	gone := commit(t, s, []byte("deleted before restart"))
	if err := s.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	d.Flush()
	if m := d.Metrics(); m.PendingBlobs != 0 || m.WrittenBlobs != 2 || m.Failures != 0 {
		t.Errorf("metrics after flush: %+v", m)
	}
	d.Close()

	s2, _, rec := storeOn(t, dir)
	if len(rec.Recovered) != 1 || rec.Recovered[0].Digest != keptDigest || len(rec.Refused) != 0 {
		t.Fatalf("recovery: %+v", rec)
	}
	if got, err := read(s2, keptDigest); err != nil || !bytes.Equal(got, kept) {
		t.Fatalf("recovered blob: %d bytes, %v", len(got), err)
	}
	if info, err := s2.Info(ctx, keptDigest); err != nil || info.Labels["a"] != "b" {
		t.Errorf("recovered labels: %v, %v", info.Labels, err)
	}
	if _, err := read(s2, gone); !errdefs.IsNotFound(err) {
		t.Errorf("deleted blob came back: %v", err)
	}
}

// TestTornWrites leaves what a crash can leave, a half-written file in
// tmp/ and, under a blob's name, a file cut short or with other bytes
// (a disk that lost a write), and checks that none of it is recovered as
// a blob, that the bad files are removed, and that the good blob is.
func TestTornWrites(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "persist")
	s, d, _ := storeOn(t, dir)
	good := []byte("a complete blob")
	goodDigest := commit(t, s, good)
	d.Close()

	blobs := filepath.Join(dir, "blobs", "sha256")
	full := bytes.Repeat([]byte("x"), 10000)
	short := digest.FromBytes(full)
	other := digest.FromBytes([]byte("what was meant"))
	writeFile(t, filepath.Join(blobs, short.Encoded()), full[:4096])
	writeFile(t, filepath.Join(blobs, other.Encoded()), []byte("what was written"))
	writeFile(t, filepath.Join(dir, "tmp", short.Encoded()+".123"), full[:100])

	s2, _, rec := storeOn(t, dir)
	if len(rec.Recovered) != 1 || rec.Recovered[0].Digest != goodDigest {
		t.Errorf("recovered %+v, want only %s", rec.Recovered, goodDigest)
	}
	for _, dg := range []digest.Digest{short, other} {
		if err := rec.Refused[dg]; !errdefs.IsDataLoss(err) {
			t.Errorf("torn %s: refused with %v, want data loss", dg, err)
		}
		if _, err := read(s2, dg); !errdefs.IsNotFound(err) {
			t.Errorf("torn %s readable: %v", dg, err)
		}
		if _, err := os.Stat(filepath.Join(blobs, dg.Encoded())); !os.IsNotExist(err) {
			t.Errorf("torn file for %s kept: %v", dg, err)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("half-written files left in tmp/: %v", left)
	}
	if got, err := read(s2, goodDigest); err != nil || !bytes.Equal(got, good) {
		t.Errorf("good blob: %q, %v", got, err)
	}
}

// TestRecoveryOverLimit recovers into a store too small for everything:
// what does not fit is refused as resource exhausted and its file kept for
// a start with a higher limit.
func TestRecoveryOverLimit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "persist")
	s, d, _ := storeOn(t, dir)
	big := commit(t, s, make([]byte, 2000))
	d.Close()

	_, _, rec := storeOn(t, dir, memstore.WithLimit(1000))
	if err := rec.Refused[big]; !errdefs.IsResourceExhausted(err) {
		t.Fatalf("blob over the limit: %v, want resource exhausted", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", big.Encoded())); err != nil {
		t.Errorf("file of a blob over the limit: %v, want kept", err)
	}
}

// TestOpenRefusesOpenDir refuses a directory others can read.
func TestOpenRefusesOpenDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), dir); err == nil {
		t.Fatal("opened a persist dir of mode 0755")
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
