package testimage

import (
	"archive/tar"
	// go-digest computes sha256 through crypto.Hash, which panics unless
	// the implementation is linked in.
	_ "crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// annotationImageName is containerd's index annotation for the full image
// name (images.AnnotationImageName, not imported to keep this package free
// of containerd). Import prefers it to the OCI ref name, which is only a tag.
const annotationImageName = "io.containerd.image.name"

// blob is a content-addressed file of the layout.
type blob struct {
	desc ocispec.Descriptor
	data []byte
}

func newBlob(mediaType string, data []byte) blob {
	return blob{
		desc: ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))},
		data: data,
	}
}

func newJSONBlob(mediaType string, v any) (blob, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return blob{}, fmt.Errorf("encode %s: %w", mediaType, err)
	}
	return newBlob(mediaType, data), nil
}

// Write writes the image s describes to w as an OCI layout tar archive:
// oci-layout, blobs/sha256/ (layer, config, manifest) and index.json.
func Write(w io.Writer, s Spec) error {
	if s.Name == "" {
		return errors.New("testimage: image name is empty")
	}
	platform := s.Platform
	if platform.OS == "" {
		platform.OS = "linux"
	}
	if platform.Architecture == "" {
		platform.Architecture = runtime.GOARCH
	}

	layerData, err := buildLayer(s.Files)
	if err != nil {
		return fmt.Errorf("testimage %s: %w", s.Name, err)
	}
	// Uncompressed, so the layer's digest is also its diff ID, and neither
	// building nor unpacking spends time on gzip.
	layer := newBlob(ocispec.MediaTypeImageLayer, layerData)
	config, err := newJSONBlob(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: platform,
		Config: ocispec.ImageConfig{
			Entrypoint: s.Entrypoint,
			Cmd:        s.Cmd,
			Env:        s.Env,
			WorkingDir: s.WorkingDir,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layer.desc.Digest}},
	})
	if err != nil {
		return err
	}
	manifest, err := newJSONBlob(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config.desc,
		Layers:    []ocispec.Descriptor{layer.desc},
	})
	if err != nil {
		return err
	}

	manifestDesc := manifest.desc
	manifestDesc.Platform = &platform
	manifestDesc.Annotations = map[string]string{
		annotationImageName:       s.Name,
		ocispec.AnnotationRefName: refName(s.Name),
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return fmt.Errorf("encode oci-layout: %w", err)
	}

	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layout},
		{blobPath(layer.desc.Digest), layer.data},
		{blobPath(config.desc.Digest), config.data},
		{blobPath(manifest.desc.Digest), manifest.data},
		// Last, so that a reader streaming the archive has every blob it
		// names by the time it gets there.
		{ocispec.ImageIndexFile, index},
	}
	for _, dir := range []string{ocispec.ImageBlobsDir + "/", ocispec.ImageBlobsDir + "/" + digest.SHA256.String() + "/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return fmt.Errorf("testimage %s: write %s: %w", s.Name, dir, err)
		}
	}
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("testimage %s: write %s: %w", s.Name, f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("testimage %s: write %s: %w", s.Name, f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("testimage %s: finish archive: %w", s.Name, err)
	}
	return nil
}

// WriteFile writes the image to a new archive at path (see Write).
func WriteFile(path string, s Spec) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("testimage: %w", cerr)
		}
	}()
	return Write(f, s)
}

func blobPath(d digest.Digest) string {
	return path.Join(ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// refName is the OCI ref name for a full image name: its tag, as containerd's
// own exporter writes it, or the whole name if it has a digest or no tag.
func refName(name string) string {
	if strings.Contains(name, "@") {
		return name
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		return name[i+1:]
	}
	return name
}
