// Package testimage builds small single-layer OCI images for the integration
// tests, from static binaries and other files, as OCI layout archives: the
// format `ctr image import` and containerd's client.Import accept. The test
// machines reach no registry, so every image the tests run is made here.
//
// The output is deterministic (fixed times, owners and order): the same Spec
// always gives the same bytes, hence the same image digest.
package testimage

import (
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one entry of the image's only layer.
type File struct {
	// Path is the absolute path in the image, e.g. "/memload". Missing
	// parent directories are created with mode 0755.
	Path string
	// Mode is the permission bits, plus os.ModeSetuid, os.ModeSetgid and
	// os.ModeSticky if wanted. os.ModeDir makes an empty directory (Data and
	// Source are then ignored). Zero means 0644, or the permission bits of
	// Source if the content is read from there.
	Mode os.FileMode
	// Data is the file's content. If nil, the content is read from Source.
	Data []byte
	// Source is a file on this machine to read the content from when Data
	// is nil.
	Source string
}

// Executable is a File for a binary on this machine, e.g. a static Go
// build, installed at imagePath with mode 0755.
func Executable(imagePath, source string) File {
	return File{Path: imagePath, Mode: 0o755, Source: source}
}

// Spec describes an image.
type Spec struct {
	// Name is the full image reference the import names the image with,
	// e.g. "docker.io/precopy/memload:test".
	Name string
	// Files are the layer's files. The layer always also has the
	// directories /dev, /etc, /proc, /sys and /tmp, which runtimes mount
	// over or expect.
	Files []File

	// The image config's execution parameters.
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string

	// Platform defaults to linux on the architecture of this build.
	Platform ocispec.Platform
}
