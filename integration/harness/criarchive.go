package harness

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"

	"github.com/precopy/precopy/precopy"
)

// Archive is a Kubernetes checkpoint archive as containerd's CRI plugin
// writes it (the kubelet's checkpoint API, `crictl checkpoint --export`):
// the CRIU images under checkpoint/, beside spec.dump, config.dump,
// status.dump, status, rootfs-diff.tar, and CRIU's dump.log and
// stats-dump when the runtime was given a work dir.
type Archive struct {
	Path string
	// Entries are the tar's headers, in order.
	Entries []*tar.Header
	// Report is precopy's report from checkpoint/, nil if there is none.
	Report *precopy.Report
}

// ReadArchive reads the archive at path.
func ReadArchive(path string) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint archive: %w", err)
	}
	defer f.Close()
	a := &Archive{Path: path}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a, nil
		}
		if err != nil {
			return nil, fmt.Errorf("checkpoint archive %s: %w", path, err)
		}
		a.Entries = append(a.Entries, h)
		if archiveName(h) == metadata.CheckpointDirectory+"/"+precopy.ReportFile {
			a.Report = &precopy.Report{}
			if err := json.NewDecoder(tr).Decode(a.Report); err != nil {
				return nil, fmt.Errorf("checkpoint archive %s: %s: %w", path, precopy.ReportFile, err)
			}
		}
	}
}

// archiveName is an entry's name without a leading ./ or a trailing /.
func archiveName(h *tar.Header) string {
	return strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
}

// Has reports whether the archive holds an entry called name (relative,
// e.g. "checkpoint/pages-1.img" or "stats-dump").
func (a *Archive) Has(name string) bool {
	for _, h := range a.Entries {
		if archiveName(h) == name {
			return true
		}
	}
	return false
}

// CRIUImages are the names of the files in checkpoint/.
func (a *Archive) CRIUImages() []string {
	var names []string
	for _, h := range a.Entries {
		if name, ok := strings.CutPrefix(archiveName(h), metadata.CheckpointDirectory+"/"); ok {
			names = append(names, name)
		}
	}
	return names
}

// NotFlat lists the entries under checkpoint/ that keep it from being one
// flat CRIU image set: anything but a regular file directly in it. CRIU
// cannot restore from a parent link or a round's subdirectory that the
// CRI plugin's re-creation of the tar turned into regular files.
func (a *Archive) NotFlat() []string {
	var bad []string
	for _, h := range a.Entries {
		name, ok := strings.CutPrefix(archiveName(h), metadata.CheckpointDirectory+"/")
		if ok && (h.Typeflag != tar.TypeReg || strings.Contains(name, "/")) {
			bad = append(bad, fmt.Sprintf("%s (type %c)", h.Name, h.Typeflag))
		}
	}
	return bad
}

// Extract unpacks the archive into dir.
func (a *Archive) Extract(ctx context.Context, dir string) error {
	return applyTar(ctx, dir, a.Path)
}

// applyTar unpacks the tar at path, compressed or not, into dir; OCI
// whiteouts in it (a rootfs diff's deletions) delete.
func applyTar(ctx context.Context, dir, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return applyStream(ctx, dir, f)
}

func applyStream(ctx context.Context, dir string, r io.Reader) error {
	ds, err := compression.DecompressStream(r)
	if err != nil {
		return err
	}
	defer ds.Close()
	if _, err := archive.Apply(ctx, dir, ds); err != nil {
		return fmt.Errorf("unpack into %s: %w", dir, err)
	}
	return nil
}

// RootfsDiffFile reads file name from the archive's rootfs-diff.tar (the
// container's rw-layer diff).
func (a *Archive) RootfsDiffFile(name string) ([]byte, error) {
	f, err := os.Open(a.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b []byte
	found := false
	err = walkTar(f, func(h *tar.Header, r io.Reader) (bool, error) {
		if archiveName(h) != metadata.RootFsDiffTar {
			return false, nil
		}
		found = true
		b, err = tarFile(r, name)
		return true, err
	})
	if err == nil && !found {
		err = errors.New("no such entry")
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint archive %s: %s: %w", a.Path, metadata.RootFsDiffTar, err)
	}
	return b, nil
}
