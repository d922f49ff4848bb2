package harness

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/precopy"
)

// Checkpoint is what a checkpoint image's CRIU tar holds.
type Checkpoint struct {
	// Entries are the tar's headers, in order.
	Entries []*tar.Header
	// Report is precopy's report, nil if the image has none.
	Report *precopy.Report
	// Files are the contents of the top-level files the reader was asked
	// to keep (CRIU's dump.log, which precopy copies into the image).
	Files map[string][]byte
}

// maxKeptFile bounds a file ReadCRIUTar keeps: CRIU's log of a final dump
// is a few MiB.
const maxKeptFile = 64 << 20

// ReadCheckpoint reads the CRIU image tar of checkpoint image ref,
// keeping the contents of the files named keep.
func ReadCheckpoint(ctx context.Context, c *containerd.Client, ref string, keep ...string) (*Checkpoint, error) {
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	store := c.ContentStore()
	b, err := content.ReadBlob(ctx, store, img.Target())
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("checkpoint %s: index: %w", ref, err)
	}
	var criuTar *ocispec.Descriptor
	for i, m := range index.Manifests {
		if m.MediaType == images.MediaTypeContainerd1Checkpoint {
			criuTar = &index.Manifests[i]
		}
	}
	if criuTar == nil {
		return nil, fmt.Errorf("checkpoint %s has no CRIU image tar", ref)
	}
	cp, err := ReadCRIUTar(ctx, store, *criuTar, keep...)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	return cp, nil
}

// ErrNotCRIUTar is ReadCRIUTar's error for a blob of another media type.
var ErrNotCRIUTar = errors.New("not a CRIU image tar")

// ReadCRIUTar reads the CRIU image tar desc from store (a descriptor of
// a checkpoint image's index, or one the task service's Checkpoint
// returned), keeping the contents of the top-level files named keep.
func ReadCRIUTar(ctx context.Context, store content.Provider, desc ocispec.Descriptor, keep ...string) (*Checkpoint, error) {
	if desc.MediaType != images.MediaTypeContainerd1Checkpoint {
		return nil, fmt.Errorf("%s (%s): %w", desc.Digest, desc.MediaType, ErrNotCRIUTar)
	}
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	var cp Checkpoint
	tr := tar.NewReader(content.NewReader(ra))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return &cp, nil
		}
		if err != nil {
			return nil, fmt.Errorf("CRIU tar: %w", err)
		}
		cp.Entries = append(cp.Entries, h)
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == precopy.ReportFile:
			cp.Report = &precopy.Report{}
			if err := json.NewDecoder(tr).Decode(cp.Report); err != nil {
				return nil, fmt.Errorf("%s: %w", precopy.ReportFile, err)
			}
		case slices.Contains(keep, name) && h.Typeflag == tar.TypeReg:
			b, err := io.ReadAll(io.LimitReader(tr, maxKeptFile))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if cp.Files == nil {
				cp.Files = make(map[string][]byte)
			}
			cp.Files[name] = b
		}
	}
}

// NotFlat lists the entries that keep a CRIU tar from being one flat image
// set: anything but a regular file at the top level. The CRI plugin
// re-creates every entry as a regular file in one directory, so a parent
// link or a round's subdirectory breaks Kubernetes' checkpoint path.
func (cp *Checkpoint) NotFlat() []string {
	var bad []string
	for _, h := range cp.Entries {
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag != tar.TypeReg || strings.Contains(strings.TrimSuffix(name, "/"), "/") {
			bad = append(bad, fmt.Sprintf("%s (type %c)", h.Name, h.Typeflag))
		}
	}
	return bad
}

// CheckpointReport is precopy's report in checkpoint image ref.
func CheckpointReport(ctx context.Context, c *containerd.Client, ref string) (*precopy.Report, error) {
	cp, err := ReadCheckpoint(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	return cp.RequireReport(ref)
}

// RequireReport is cp's report, an error naming image ref if it has none.
func (cp *Checkpoint) RequireReport(ref string) (*precopy.Report, error) {
	if cp.Report == nil {
		return nil, fmt.Errorf("checkpoint %s has no %s", ref, precopy.ReportFile)
	}
	return cp.Report, nil
}
