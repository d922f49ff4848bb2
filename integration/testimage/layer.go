package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// epoch is the time stamp of every entry, for reproducible digests (as
// SOURCE_DATE_EPOCH=0 would give).
var epoch = time.Unix(0, 0).UTC()

// baseDirs are created in every layer: runc mounts proc, sysfs and a dev
// tmpfs over the first three, and programs expect the others.
var baseDirs = map[string]os.FileMode{
	"dev":  0o755,
	"etc":  0o755,
	"proc": 0o755,
	"sys":  0o755,
	"tmp":  0o777 | os.ModeSticky,
}

// entry is one tar entry of the layer, keyed by its clean relative path.
type entry struct {
	dir  bool
	mode os.FileMode
	data []byte
	// explicit marks an entry a File asked for, as opposed to a parent or
	// base directory that was implied; two explicit entries may not clash.
	explicit bool
}

// buildLayer returns the uncompressed layer tar holding files.
func buildLayer(files []File) ([]byte, error) {
	entries := make(map[string]*entry)
	for name, mode := range baseDirs {
		entries[name] = &entry{dir: true, mode: mode}
	}
	for _, f := range files {
		if err := addFile(entries, f); err != nil {
			return nil, err
		}
	}

	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	// A parent's name is a prefix of its children's, so it sorts first, as
	// extractors expect.
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		if err := writeEntry(tw, name, entries[name]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("finish layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// addFile adds f and its missing parents to entries.
func addFile(entries map[string]*entry, f File) error {
	name, err := layerPath(f.Path)
	if err != nil {
		return err
	}
	e, err := newEntry(f)
	if err != nil {
		return err
	}
	if old, ok := entries[name]; ok {
		switch {
		case old.explicit:
			return fmt.Errorf("image path %s: given twice", f.Path)
		case !e.dir:
			return fmt.Errorf("image path %s: is a directory, holding other files", f.Path)
		}
	}
	entries[name] = e

	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		parent, ok := entries[dir]
		if !ok {
			entries[dir] = &entry{dir: true, mode: 0o755}
			continue
		}
		if !parent.dir {
			return fmt.Errorf("image path %s: parent /%s is a file", f.Path, dir)
		}
	}
	return nil
}

// layerPath turns an absolute image path into a tar entry name, which is
// relative.
func layerPath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("image path %q: not absolute", p)
	}
	name := strings.TrimPrefix(path.Clean(p), "/")
	if name == "" {
		return "", fmt.Errorf("image path %q: is the root", p)
	}
	return name, nil
}

func newEntry(f File) (*entry, error) {
	if f.Mode.IsDir() {
		return &entry{dir: true, mode: permOr(f.Mode, 0o755), explicit: true}, nil
	}
	if !f.Mode.IsRegular() {
		return nil, fmt.Errorf("image path %s: mode %v is neither a regular file nor a directory", f.Path, f.Mode)
	}
	e := &entry{mode: permOr(f.Mode, 0o644), data: f.Data, explicit: true}
	if f.Data != nil {
		return e, nil
	}
	if f.Source == "" {
		return nil, fmt.Errorf("image path %s: neither Data nor Source given", f.Path)
	}
	data, err := os.ReadFile(f.Source)
	if err != nil {
		return nil, fmt.Errorf("image path %s: %w", f.Path, err)
	}
	e.data = data
	if f.Mode == 0 {
		info, err := os.Stat(f.Source)
		if err != nil {
			return nil, fmt.Errorf("image path %s: %w", f.Path, err)
		}
		e.mode = info.Mode().Perm()
	}
	return e, nil
}

// permOr keeps mode's permission and special bits, or def if there are
// none.
func permOr(mode, def os.FileMode) os.FileMode {
	const bits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky
	if mode&bits == 0 {
		return def
	}
	return mode & bits
}

func writeEntry(tw *tar.Writer, name string, e *entry) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    tarMode(e.mode),
		ModTime: epoch,
		Uname:   "root",
		Gname:   "root",
	}
	if e.dir {
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	} else {
		hdr.Typeflag = tar.TypeReg
		hdr.Size = int64(len(e.data))
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("layer entry %s: %w", name, err)
	}
	if _, err := tw.Write(e.data); err != nil {
		return fmt.Errorf("layer entry %s: %w", name, err)
	}
	return nil
}

// tarMode converts Go's mode bits to the Unix ones tar stores.
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
