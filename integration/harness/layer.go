package harness

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayerNames lists the entries of layer desc (a diff, compressed or not)
// in store, by their cleaned names.
func LayerNames(ctx context.Context, store content.Provider, desc ocispec.Descriptor) (map[string]bool, error) {
	names := map[string]bool{}
	err := walkLayer(ctx, store, desc, func(h *tar.Header, _ io.Reader) (bool, error) {
		names[filepath.Clean(h.Name)] = true
		return false, nil
	})
	return names, err
}

// LayerFile reads file name from layer desc in store; the error wraps
// ErrNotInLayer when the layer does not hold it.
func LayerFile(ctx context.Context, store content.Provider, desc ocispec.Descriptor, name string) ([]byte, error) {
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	b, err := tarFile(content.NewReader(ra), name)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return b, nil
}

// tarFile reads file name from the tar r, compressed or not.
func tarFile(r io.Reader, name string) ([]byte, error) {
	var b []byte
	err := walkTar(r, func(h *tar.Header, r io.Reader) (found bool, err error) {
		if filepath.Clean(h.Name) != name {
			return false, nil
		}
		b, err = io.ReadAll(r)
		return true, err
	})
	if err == nil && b == nil {
		err = fmt.Errorf("%s: %w", name, ErrNotInLayer)
	}
	return b, err
}

// ErrNotInLayer is LayerFile's error for a file the layer does not hold.
var ErrNotInLayer = errors.New("not in the layer")

// walkLayer calls f with each entry of layer desc in store until f says
// it is done or fails.
func walkLayer(ctx context.Context, store content.Provider, desc ocispec.Descriptor, f func(*tar.Header, io.Reader) (bool, error)) error {
	ra, err := store.ReaderAt(ctx, desc)
	if err != nil {
		return err
	}
	defer ra.Close()
	if err := walkTar(content.NewReader(ra), f); err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return nil
}

// walkTar calls f with each entry of the tar r, compressed or not, until
// f says it is done or fails.
func walkTar(r io.Reader, f func(*tar.Header, io.Reader) (bool, error)) error {
	ds, err := compression.DecompressStream(r)
	if err != nil {
		return err
	}
	defer ds.Close()
	tr := tar.NewReader(ds)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if done, err := f(h, tr); done || err != nil {
			return err
		}
	}
}
