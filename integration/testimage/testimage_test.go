package testimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testName = "docker.io/precopy/test:v1"

func testSpec(t *testing.T) Spec {
	t.Helper()
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Name: testName,
		Files: []File{
			Executable("/memload", src),
			{Path: "/etc/hostname", Data: []byte("box\n")},
			{Path: "/opt/deep/nested/data", Mode: 0o600, Data: []byte("x")},
			{Path: "/var/empty", Mode: os.ModeDir | 0o700},
		},
		Entrypoint: []string{"/memload"},
		Cmd:        []string{"-mib", "8"},
		Env:        []string{"A=b"},
		WorkingDir: "/",
	}
}

// readTar returns the regular files and the directories of a tar archive.
func readTar(t *testing.T, data []byte) (files map[string][]byte, hdrs map[string]*tar.Header) {
	t.Helper()
	files, hdrs = map[string][]byte{}, map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := hdrs[hdr.Name]; dup {
			t.Fatalf("entry %s appears twice", hdr.Name)
		}
		hdrs[hdr.Name] = hdr
		if hdr.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[hdr.Name] = b
		}
	}
}

// openBlob returns the blob desc names, after checking its size and digest
// against desc, and decodes it into v if v is not nil.
func openBlob(t *testing.T, files map[string][]byte, desc ocispec.Descriptor, v any) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+desc.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s (%s) missing", desc.Digest, desc.MediaType)
	}
	if int64(len(b)) != desc.Size {
		t.Fatalf("blob %s: %d bytes, descriptor says %d", desc.Digest, len(b), desc.Size)
	}
	if got := digest.FromBytes(b); got != desc.Digest {
		t.Fatalf("blob %s has digest %s", desc.Digest, got)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("blob %s: %v", desc.Digest, err)
		}
	}
	return b
}

func TestWriteMakesAValidLayout(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, testSpec(t)); err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, buf.Bytes())

	var layout ocispec.ImageLayout
	if err := json.Unmarshal(files["oci-layout"], &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout %q: %v", files["oci-layout"], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	mdesc := index.Manifests[0]
	if got := mdesc.Annotations["io.containerd.image.name"]; got != testName {
		t.Errorf("containerd image name annotation %q, want %q", got, testName)
	}
	if got := mdesc.Annotations[ocispec.AnnotationRefName]; got != "v1" {
		t.Errorf("OCI ref name %q, want the tag v1", got)
	}
	if mdesc.Platform == nil || mdesc.Platform.OS != "linux" || mdesc.Platform.Architecture != runtime.GOARCH {
		t.Errorf("manifest platform %+v, want linux/%s", mdesc.Platform, runtime.GOARCH)
	}

	var manifest ocispec.Manifest
	openBlob(t, files, mdesc, &manifest)
	if manifest.MediaType != ocispec.MediaTypeImageManifest || mdesc.MediaType != manifest.MediaType {
		t.Errorf("manifest media types %q, %q", mdesc.MediaType, manifest.MediaType)
	}
	var config ocispec.Image
	openBlob(t, files, manifest.Config, &config)
	if len(manifest.Layers) != 1 {
		t.Fatalf("manifest has %d layers, want 1", len(manifest.Layers))
	}
	layer := openBlob(t, files, manifest.Layers[0], nil)
	if !slices.Equal(config.RootFS.DiffIDs, []digest.Digest{manifest.Layers[0].Digest}) {
		t.Errorf("diff IDs %v, want the (uncompressed) layer digest %s", config.RootFS.DiffIDs, manifest.Layers[0].Digest)
	}
	if !slices.Equal(config.Config.Entrypoint, []string{"/memload"}) || !slices.Equal(config.Config.Cmd, []string{"-mib", "8"}) ||
		!slices.Equal(config.Config.Env, []string{"A=b"}) || config.Config.WorkingDir != "/" {
		t.Errorf("config %+v does not match the spec", config.Config)
	}

	lfiles, lhdrs := readTar(t, layer)
	for name, want := range map[string]string{"memload": "#!binary", "etc/hostname": "box\n", "opt/deep/nested/data": "x"} {
		if got := string(lfiles[name]); got != want {
			t.Errorf("layer file %s = %q, want %q", name, got, want)
		}
	}
	for name, mode := range map[string]int64{
		"memload": 0o755, "etc/hostname": 0o644, "opt/deep/nested/data": 0o600,
		"opt/": 0o755, "opt/deep/": 0o755, "opt/deep/nested/": 0o755, "var/": 0o755, "var/empty/": 0o700,
		"dev/": 0o755, "etc/": 0o755, "proc/": 0o755, "sys/": 0o755, "tmp/": 0o1777,
	} {
		hdr, ok := lhdrs[name]
		if !ok {
			t.Errorf("layer has no %s", name)
			continue
		}
		if hdr.Mode != mode {
			t.Errorf("layer %s mode %o, want %o", name, hdr.Mode, mode)
		}
		if isDir := strings.HasSuffix(name, "/"); isDir != (hdr.Typeflag == tar.TypeDir) {
			t.Errorf("layer %s has type %c", name, hdr.Typeflag)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.ModTime.Unix() != 0 {
			t.Errorf("layer %s: owner %d:%d, mtime %v", name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
	}
}

func TestParentsPrecedeChildren(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, Spec{Name: testName, Files: []File{
		{Path: "/a/b", Data: nil, Mode: os.ModeDir},
		{Path: "/a-b", Data: []byte{}},
		{Path: "/a/b/c", Data: []byte("c")},
	}}); err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, buf.Bytes())
	var index ocispec.Index
	var manifest ocispec.Manifest
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	openBlob(t, files, index.Manifests[0], &manifest)
	tr := tar.NewReader(bytes.NewReader(openBlob(t, files, manifest.Layers[0], nil)))
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if dir := filepath.Dir(name); dir != "." && !seen[dir] {
			t.Errorf("%s comes before its parent %s", hdr.Name, dir)
		}
		seen[name] = true
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	spec := testSpec(t)
	var a, b bytes.Buffer
	if err := Write(&a, spec); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, spec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two writes of the same spec differ")
	}
}

func TestWriteRejectsBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []File
	}{
		{"relative path", []File{{Path: "memload", Data: []byte{}}}},
		{"root", []File{{Path: "/", Data: []byte{}}}},
		{"duplicate", []File{{Path: "/x", Data: []byte{}}, {Path: "/x/", Data: []byte{}}}},
		{"file over a directory", []File{{Path: "/x/y", Data: []byte{}}, {Path: "/x", Data: []byte{}}}},
		{"file under a file", []File{{Path: "/x", Data: []byte{}}, {Path: "/x/y", Data: []byte{}}}},
		{"file over a base directory", []File{{Path: "/tmp", Data: []byte{}}}},
		{"no content", []File{{Path: "/x"}}},
		{"missing source", []File{{Path: "/x", Source: "/nonexistent/precopy"}}},
		{"symlink", []File{{Path: "/x", Mode: os.ModeSymlink, Data: []byte{}}}},
	} {
		if err := Write(io.Discard, Spec{Name: testName, Files: tc.files}); err == nil {
			t.Errorf("%s: Write accepted %+v", tc.name, tc.files)
		}
	}
	if err := Write(io.Discard, Spec{}); err == nil {
		t.Error("Write accepted an image without a name")
	}
}

func TestRefName(t *testing.T) {
	for name, want := range map[string]string{
		"docker.io/precopy/memload:test":   "test",
		"localhost:5000/memload":           "localhost:5000/memload",
		"docker.io/precopy/memload@sha256": "docker.io/precopy/memload@sha256",
	} {
		if got := refName(name); got != want {
			t.Errorf("refName(%q) = %q, want %q", name, got, want)
		}
	}
}
