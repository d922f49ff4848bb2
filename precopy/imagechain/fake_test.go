package imagechain

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"google.golang.org/protobuf/encoding/protowire"
)

var pageSize = uint64(os.Getpagesize())

// fakeEntry is a pagemap entry of a synthetic image, in pages.
type fakeEntry struct {
	page, pages uint64
	flags       uint32
}

// fakePagemap is one pagemap image (and its pages file) of a synthetic dir.
type fakePagemap struct {
	name    string
	pagesID uint32
	entries []fakeEntry
	// legacy writes pre-flags images: in_parent for PE_PARENT, no flags
	// for PE_PRESENT. wide writes nr_pages in field 5 only, as CRIU 4.2+.
	legacy, wide bool
}

// pageContent is what a synthetic dir's pages file holds for a page: unique
// per (dir tag, pagemap, address), so a page taken from the wrong level or
// offset shows.
func pageContent(tag, name string, vaddr uint64) []byte {
	seed := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%#x", tag, name, vaddr))
	b := make([]byte, 0, pageSize)
	for len(b) < int(pageSize) {
		b = append(b, seed[:]...)
		seed = sha256.Sum256(seed[:])
	}
	return b[:pageSize]
}

// writeFakeDir creates dir with pagemaps whose present pages hold
// pageContent(tag, ...), and a parent link to parent unless it is "".
func writeFakeDir(t testing.TB, dir, tag, parent string, pms ...fakePagemap) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, pm := range pms {
		writeFakePagemap(t, dir, tag, pm)
	}
	if parent != "" {
		if err := os.Symlink(parent, filepath.Join(dir, parentLinkName)); err != nil {
			t.Fatal(err)
		}
	}
	// Images CRIU does not flatten must be left alone.
	if err := os.WriteFile(filepath.Join(dir, "inventory.img"), []byte(tag), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeFakePagemap(t testing.TB, dir, tag string, pm fakePagemap) {
	t.Helper()
	id := pm.pagesID
	img := &crit.CriuImage{Magic: pagemapMagic, Entries: []*crit.CriuEntry{{Message: &pagemap.PagemapHead{PagesId: &id}}}}
	var pages bytes.Buffer
	for _, fe := range pm.entries {
		vaddr := fe.page * pageSize
		n := uint32(fe.pages)
		pe := &pagemap.PagemapEntry{Vaddr: &vaddr, NrPages: &n}
		switch {
		case pm.legacy && fe.flags == PEParent:
			in := true
			pe.InParent = &in
		case pm.legacy && fe.flags == PEPresent:
		default:
			flags := fe.flags
			pe.Flags = &flags
		}
		if pm.wide {
			var zero uint32
			pe.NrPages = &zero
			b := protowire.AppendTag(nil, wideNrPagesField, protowire.VarintType)
			pe.ProtoReflect().SetUnknown(protowire.AppendVarint(b, fe.pages))
		}
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: pe})
		if fe.flags&PEPresent != 0 {
			for i := uint64(0); i < fe.pages; i++ {
				pages.Write(pageContent(tag, pm.name, vaddr+i*pageSize))
			}
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, pm.name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, pagesName(id)), pages.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// memoryOf returns a digest of every page the restore of dir would get for
// pagemap name, by address. It reads the way CRIU's restore does, without
// the package's index or copy code: each pagemap is expanded page by page
// (present pages numbered in file order, as skip_pagemap_pages counts
// pi_off), and a PE_PARENT page is looked up in dir/parent, recursively.
func memoryOf(t *testing.T, dir, name string) map[uint64]uint64 {
	t.Helper()
	r := &refReader{pagemaps: map[string]*refPagemap{}}
	defer r.close()
	top, err := r.pagemap(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	mem := make(map[uint64]uint64, len(top.pages))
	buf := make([]byte, pageSize)
	for vaddr := range top.pages {
		if err := r.readPage(dir, name, vaddr, buf); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		mem[vaddr] = maphash.Bytes(digestSeed, buf)
	}
	return mem
}

var digestSeed = maphash.MakeSeed()

type refReader struct {
	pagemaps map[string]*refPagemap // by path
}

type refPagemap struct {
	pages map[uint64]refPage
	file  *os.File
}

type refPage struct {
	inParent bool
	off      int64
}

func (r *refReader) pagemap(dir, name string) (*refPagemap, error) {
	path := filepath.Join(dir, name)
	if pm, ok := r.pagemaps[path]; ok {
		return pm, nil
	}
	img, err := readPagemap(path)
	if err != nil {
		return nil, err
	}
	pm := &refPagemap{pages: map[uint64]refPage{}}
	var off int64
	for _, e := range img.entries {
		for i := uint64(0); i < e.pages; i++ {
			pm.pages[e.vaddr+i*pageSize] = refPage{inParent: e.inParent(), off: off}
			if e.present() {
				off += int64(pageSize)
			}
		}
	}
	if off > 0 {
		if pm.file, err = os.Open(filepath.Join(dir, pagesName(img.pagesID))); err != nil {
			return nil, err
		}
	}
	r.pagemaps[path] = pm
	return pm, nil
}

func (r *refReader) readPage(dir, name string, vaddr uint64, buf []byte) error {
	pm, err := r.pagemap(dir, name)
	if err != nil {
		return err
	}
	p, ok := pm.pages[vaddr]
	switch {
	case !ok:
		return fmt.Errorf("%s: %s has no page %#x", dir, name, vaddr)
	case p.inParent:
		return r.readPage(filepath.Join(dir, parentLinkName), name, vaddr, buf)
	}
	if _, err := pm.file.ReadAt(buf, p.off); err != nil {
		return fmt.Errorf("%s: page %#x: %w", dir, vaddr, err)
	}
	return nil
}

func (r *refReader) close() {
	for _, pm := range r.pagemaps {
		if pm.file != nil {
			pm.file.Close()
		}
	}
}

// pagemapNames lists the pagemaps of dir.
func pagemapNames(t *testing.T, dir string) []string {
	t.Helper()
	names, err := dirNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(names, func(n string) bool { return !isPagemapName(n) })
}

// memoryOfDir is memoryOf for every pagemap of dir.
func memoryOfDir(t *testing.T, dir string) map[string]map[uint64]uint64 {
	t.Helper()
	all := make(map[string]map[uint64]uint64)
	for _, name := range pagemapNames(t, dir) {
		all[name] = memoryOf(t, dir, name)
	}
	return all
}

// sameMemory fails unless got and want hold the same pages.
func sameMemory(t *testing.T, got, want map[string]map[uint64]uint64) {
	t.Helper()
	for name, w := range want {
		g := got[name]
		if len(g) != len(w) {
			t.Errorf("%s: %d pages, want %d", name, len(g), len(w))
		}
		bad := 0
		for vaddr, wb := range w {
			if gb, ok := g[vaddr]; !ok || gb != wb {
				if bad < 5 {
					t.Errorf("%s: page %#x differs (present %v)", name, vaddr, ok)
				}
				bad++
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d pages differ", name, bad, len(w))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected pagemap %s", name)
		}
	}
}

// snapshot records a dir's files (content, or link target) to check that
// a failed Flatten left it alone.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := make(map[string]string)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			files[rel] = "-> " + target
			return err
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			sum := sha256.Sum256(b)
			files[rel] = fmt.Sprintf("%x", sum[:8])
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func sameSnapshot(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s: now %q, was %q", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: new file %q", k, g)
		}
	}
}

// flagsOf returns the flags of every entry of a pagemap.
func flagsOf(t *testing.T, path string) []uint32 {
	t.Helper()
	img, err := readPagemap(path)
	if err != nil {
		t.Fatal(err)
	}
	var flags []uint32
	for _, e := range img.entries {
		flags = append(flags, e.flags)
	}
	return flags
}

// dirNames lists dir, sorted.
func dirNames(dir string) ([]string, error) {
	d, err := openImageDir(dir)
	if err != nil {
		return nil, err
	}
	defer d.close()
	return d.names()
}

// readPagemapFile decodes a pagemap by path (a test's own files).
func readPagemapFile(path string) (*pagemapImage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodePagemap(b)
}
