// Package report finds precopy's report (precopy-report.json) in a
// checkpoint, wherever the checkpoint is: a containerd checkpoint image
// (in its CRIU tar), a Kubernetes checkpoint archive (under checkpoint/),
// or an image dir on disk; and prints it for people.
package report

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/precopy/precopy/precopy"
)

// criArchiveDir is where a Kubernetes checkpoint archive holds the CRIU
// images (checkpointctl's metadata.CheckpointDirectory; containerd's CRI
// plugin writes it so).
const criArchiveDir = "checkpoint"

// ErrNoReport is wrapped by the error for a checkpoint that holds no
// report: one precopy did not make (stock runc-v2's, say).
var ErrNoReport = errors.New("no " + precopy.ReportFile + " in it (not made by precopy's shim?)")

// Source is where a report was read.
type Source struct {
	// Kind is "image" (a containerd checkpoint image), "archive" (a
	// Kubernetes checkpoint archive or a CRIU tar) or "dir" (an image dir).
	Kind string
	// Name is the image's name or the path.
	Name string
}

// Connect returns a containerd client, in the namespace of the context it
// returns; Read calls it only for a checkpoint image.
type Connect func(ctx context.Context) (*containerd.Client, context.Context, error)

// Read reads the report of the checkpoint arg names: a path that exists
// (an archive file or an image dir), else a checkpoint image's name in
// containerd. An arg found nowhere is errdefs.ErrNotFound, as is a
// checkpoint without a report (wrapping ErrNoReport too).
func Read(ctx context.Context, arg string, connect Connect) (*precopy.Report, Source, error) {
	if st, err := os.Stat(arg); err == nil {
		if st.IsDir() {
			r, err := readDir(arg)
			return r, Source{"dir", arg}, err
		}
		r, err := readArchiveFile(arg)
		return r, Source{"archive", arg}, err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, Source{}, err
	}
	if looksLikePath(arg) {
		return nil, Source{}, fmt.Errorf("%s: %w", arg, errdefs.ErrNotFound)
	}
	client, ctx, err := connect(ctx)
	if err != nil {
		return nil, Source{}, err
	}
	defer client.Close()
	r, err := readImage(ctx, client, arg)
	return r, Source{"image", arg}, err
}

// looksLikePath: an arg that can only be meant as a file (an image name
// has no leading / or ., nor an archive suffix), so a missing file is not
// looked up in containerd as an image.
func looksLikePath(arg string) bool {
	return strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") ||
		strings.HasSuffix(arg, ".tar") || strings.HasSuffix(arg, ".tar.gz") || strings.HasSuffix(arg, ".tgz")
}

// readDir reads the report of an image dir: CRIU's images with the report
// among them, or an extracted Kubernetes archive (checkpoint/ in it).
func readDir(dir string) (*precopy.Report, error) {
	for _, p := range []string{precopy.ReportFile, filepath.Join(criArchiveDir, precopy.ReportFile)} {
		f, err := os.Open(filepath.Join(dir, p))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return decode(f, filepath.Join(dir, p))
	}
	return nil, fmt.Errorf("%s: %w: %w", dir, ErrNoReport, errdefs.ErrNotFound)
}

// readArchiveFile reads the report from a tar file, compressed or not: a
// Kubernetes checkpoint archive (crictl checkpoint --export, the
// kubelet's), or a checkpoint image's CRIU tar.
func readArchiveFile(p string) (*precopy.Report, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	magic := make([]byte, 10)
	n, err := f.ReadAt(magic, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if compression.DetectCompression(magic[:n]) == compression.Uncompressed {
		// Seekable: the tar reader skips the memory pages instead of
		// reading them.
		return fromTar(f, p)
	}
	ds, err := compression.DecompressStream(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	defer ds.Close()
	return fromTar(ds, p)
}

// fromTar finds the report in a tar stream: at its top (a CRIU tar) or
// under checkpoint/ (a Kubernetes archive). name is for errors. A stream
// that can seek is not read past the headers but for the report.
func fromTar(r io.Reader, name string) (*precopy.Report, error) {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w: %w", name, ErrNoReport, errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: not a checkpoint archive: %w", name, err)
		}
		p := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if h.Typeflag == tar.TypeReg && (p == precopy.ReportFile || p == criArchiveDir+"/"+precopy.ReportFile) {
			return decode(tr, name+":"+p)
		}
	}
}

// readImage reads the report from the CRIU tar of checkpoint image ref.
func readImage(ctx context.Context, client *containerd.Client, ref string) (*precopy.Report, error) {
	img, err := client.ImageService().Get(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("checkpoint image %s: %w", ref, err)
	}
	return FromImage(ctx, client, img)
}

// CRIUTar is the descriptor of the CRIU images' tar in checkpoint image
// img (containerd's checkpoint index lists it by its media type).
func CRIUTar(ctx context.Context, store content.Provider, img images.Image) (ocispec.Descriptor, error) {
	index, err := Index(ctx, store, img)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range index.Manifests {
		if m.MediaType == images.MediaTypeContainerd1Checkpoint {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("image %s is not a checkpoint with a task: no CRIU images in it: %w", img.Name, errdefs.ErrNotFound)
}

// Index is checkpoint image img's index.
func Index(ctx context.Context, store content.Provider, img images.Image) (*ocispec.Index, error) {
	if img.Target.MediaType != ocispec.MediaTypeImageIndex {
		return nil, fmt.Errorf("image %s is not a checkpoint (its target is %s): %w", img.Name, img.Target.MediaType, errdefs.ErrNotFound)
	}
	b, err := content.ReadBlob(ctx, store, img.Target)
	if err != nil {
		return nil, fmt.Errorf("checkpoint image %s: %w", img.Name, err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("checkpoint image %s: index: %w", img.Name, err)
	}
	return &index, nil
}

func decode(r io.Reader, name string) (*precopy.Report, error) {
	var rep precopy.Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &rep, nil
}

// FromImage reads the report of checkpoint image img.
func FromImage(ctx context.Context, client *containerd.Client, img images.Image) (*precopy.Report, error) {
	desc, err := CRIUTar(ctx, client.ContentStore(), img)
	if err != nil {
		return nil, err
	}
	ra, err := client.ContentStore().ReaderAt(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("checkpoint image %s: %w", img.Name, err)
	}
	defer ra.Close()
	// A CRIU tar is not compressed; as a section it seeks, so only the
	// headers and the report are read, not the memory.
	return fromTar(io.NewSectionReader(ra, 0, ra.Size()), img.Name)
}
