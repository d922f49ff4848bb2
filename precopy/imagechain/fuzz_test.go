package imagechain

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Fuzz targets. `go test` runs their seed corpus (the f.Add calls and
// testdata/fuzz); `make fuzz` (FUZZTIME, 5 s each by default, as part of
// `make test`) explores further:
//
//	make fuzz FUZZTIME=10m
//	go test -run '^$' -fuzz '^FuzzFlatten$' -fuzztime 10m ./precopy/imagechain/
//
// Inputs that fail are saved under testdata/fuzz/<target>/ and then run
// with every `go test`: commit them with the fix.

// FuzzDecodePagemap feeds arbitrary bytes to the pagemap decoder and
// index: they must not panic, an index must be sorted, free of overlaps
// and sized without overflow, and what decodes must encode back to an
// image that decodes the same.
func FuzzDecodePagemap(f *testing.F) {
	for _, seed := range pagemapSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePagemap(b)
		if err != nil {
			return
		}
		const ps = 4096
		if x, err := newPageIndex(p, ps); err == nil {
			var present int64
			for _, e := range p.entries {
				if e.present() {
					present += int64(e.pages * ps)
				}
			}
			if present != x.presentBytes || present < 0 {
				t.Fatalf("index says %d present bytes, the entries %d", x.presentBytes, present)
			}
			for i, s := range x.spans {
				if s.end(ps) < s.vaddr || s.end(ps) == s.vaddr {
					t.Fatalf("span %s wraps", s.entry)
				}
				if i > 0 && x.spans[i-1].end(ps) > s.vaddr {
					t.Fatalf("spans %s and %s overlap", x.spans[i-1].entry, s.entry)
				}
				if got, ok := x.lookup(s.vaddr, ps); !ok || got.vaddr != s.vaddr {
					t.Fatalf("lookup %#x: %v %v", s.vaddr, got.entry, ok)
				}
				if got, ok := x.lookup(s.end(ps)-ps, ps); !ok || got.vaddr != s.vaddr {
					t.Fatalf("lookup of the last page of %s: %v %v", s.entry, got.entry, ok)
				}
			}
		}
		enc, err := encodePagemap(p)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", p, err)
		}
		q, err := decodePagemap(enc)
		if err != nil {
			t.Fatalf("re-encoded image does not decode: %v", err)
		}
		if q.pagesID != p.pagesID || q.wide != p.wide || !slices.Equal(q.entries, p.entries) {
			t.Fatalf("round trip: %+v, was %+v", q, p)
		}
	})
}

// pagemapSeeds are encoded pagemaps: CRIU's current, pre-flags and 4.2+
// formats (through crit, as the fake images are written), one with a count
// past 32 bits, and broken ones.
func pagemapSeeds(f *testing.F) [][]byte {
	dir := f.TempDir()
	var seeds [][]byte
	for i, pm := range []fakePagemap{
		{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, 8, pel}, {0x110, 4, pe}, {0x120, 2, par}}},
		{name: "pagemap-2.img", pagesID: 2, legacy: true, entries: []fakeEntry{{0x200, 4, par}, {0x204, 1, pe}}},
		{name: "pagemap-3.img", pagesID: 3, wide: true, entries: []fakeEntry{{0x300, 3, pe}, {0x303, 5, par}}},
		{name: "pagemap-shmem-4.img", pagesID: 4},
	} {
		sub := filepath.Join(dir, fmt.Sprint(i))
		if err := os.Mkdir(sub, 0o700); err != nil {
			f.Fatal(err)
		}
		writeFakePagemap(f, sub, "seed", pm)
		b, err := os.ReadFile(filepath.Join(sub, pm.name))
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b, b[:len(b)-1], append(slices.Clone(b), 1, 0, 0, 0))
	}
	wide, err := encodePagemap(&pagemapImage{pagesID: 5, wide: true, entries: []entry{{0x1000, 1 << 40, pe}, {math.MaxUint64 - 4095, 1, par}}})
	if err != nil {
		f.Fatal(err)
	}
	return append(seeds, wide, nil, []byte("not an image"))
}

// FuzzFlatten builds chains of image dirs from the fuzzer's bytes and
// flattens them. shape drives a generator that evolves each task's memory
// across rounds as CRIU would see it (pages mapped, dirtied, unchanged,
// unmapped, tasks that appear), with an occasional entry that lies about
// its parent; mutation plants one hostile change (a symlinked, hard
// linked, truncated, grown or FIFO file, an absolute, escaping, looping or
// symlinked parent link, a corrupted pagemap); consume picks
// FlattenConsuming (with Within, as its callers should), bounded Flatten
// with Within too; onTmpfs builds the chain on tmpfs, where
// FlattenConsuming keeps the parent's layout or copies, instead of the
// test's temp dir (ext4 or XFS, where it also shifts ranges).
//
// Whatever the input, nothing outside the chain changes; a refusal leaves
// every dir as it was; a success leaves dir flat, self-contained and
// holding the memory CRIU's restore would have read through the chain
// (the reference reader), from files with one link; a hostile change
// flatten must see (in dir itself, or any parent link) is refused; and
// without a change, FlattenConsuming's files are Flatten's, byte for byte.
func FuzzFlatten(f *testing.F) {
	// Seeds: a few chains, each with every mutation, once in dir itself
	// (target's high bit) and once further up, cycling through the modes.
	for i := range 4 {
		rng := rand.New(rand.NewPCG(uint64(i), 0))
		shape := make([]byte, 96)
		for j := range shape {
			shape[j] = byte(rng.Uint32())
		}
		shape[0] = byte(i + 1) // 2, 3, 4, 1 dirs
		for m := range uint8(mutationCount) {
			for k, target := range []uint8{0x80 | m, m} {
				f.Add(shape, m, target, uint8((int(m)+k+i)%3)|uint8(i%2)<<2)
			}
		}
	}
	f.Fuzz(func(t *testing.T, shape []byte, mutation, target, flags uint8) {
		consume, bounded, onTmpfs := flags&1 != 0, flags&2 != 0, flags&4 != 0
		root := t.TempDir()
		if onTmpfs {
			root = tmpfsDir(t)
		}
		g := &chainGen{src: byteSource{b: shape}, root: root}
		g.build(t)
		pristine, pristineErr := refMemoryOfDir(g.top())
		m := g.mutate(t, mutation, target)
		want, wantErr := pristine, pristineErr
		if m.content {
			// The change is to what the chain says, not where it leads.
			want, wantErr = refMemoryOfDir(g.top())
		}
		outside := treeState(t, g.outside)
		before := make(map[string]map[string]string)
		for _, d := range g.dirs {
			before[d] = snapshot(t, d)
		}

		// What Flatten makes of an unchanged chain, to compare with.
		var copied string
		if consume && m.name == "none" {
			copied = filepath.Join(root, "copy")
			copyTree(t, g.chain, copied)
		}

		var opts []Option
		flatten := Flatten
		if consume {
			flatten = FlattenConsuming
		}
		if consume || bounded {
			opts = append(opts, Within(g.chain))
		}
		res, err := flatten(g.top(), opts...)

		sameTree(t, treeState(t, g.outside), outside)
		if err != nil {
			if res.Flattened {
				t.Fatalf("error after the commit point: %v", err)
			}
			for _, d := range g.dirs {
				sameSnapshot(t, snapshot(t, d), before[d])
			}
			// The hostile change is the reason, unless the chain was
			// broken anyway (flatten names the first problem it meets).
			if m.mustRefuse && m.unsafe && pristineErr == nil && !errors.Is(err, ErrUnsafeImage) {
				t.Errorf("%s: error %v, want ErrUnsafeImage", m.name, err)
			}
			return
		}
		if m.mustRefuse {
			t.Fatalf("%s: flattened: %+v", m.name, res)
		}
		if wantErr != nil {
			t.Fatalf("flattened %+v a chain CRIU could not restore: %v", res, wantErr)
		}
		if !consume {
			for _, d := range g.dirs[:len(g.dirs)-1] {
				sameSnapshot(t, snapshot(t, d), before[d])
			}
		}
		for _, d := range g.dirs[:len(g.dirs)-1] {
			if err := os.RemoveAll(d); err != nil {
				t.Fatal(err)
			}
		}
		if err := checkFlatChain(g.top()); err != nil {
			t.Fatal(err)
		}
		if err := CheckFlat(g.top()); err != nil {
			t.Fatalf("flattened dir: %v", err)
		}
		got, err := refMemoryOfDir(g.top())
		if err != nil {
			t.Fatalf("flat dir does not restore: %v", err)
		}
		if !maps2Equal(got, want) {
			t.Fatalf("flat dir holds other memory than the chain (%d pagemaps, want %d)", len(got), len(want))
		}
		if copied != "" {
			top := filepath.Join(copied, filepath.Base(g.top()))
			if _, err := Flatten(top, Within(copied)); err != nil {
				t.Fatalf("FlattenConsuming flattened %+v, Flatten fails: %v", res, err)
			}
			sameSnapshot(t, snapshot(t, g.top()), snapshot(t, top))
		}
	})
}

// byteSource hands out the fuzzer's bytes, zeros once they run out.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) byte() byte {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *byteSource) intn(n int) int { return int(s.byte()) % n }

// chainGen generates a chain under root/chain (d1 … dN, dN the one
// flattened) and the targets hostile links point at under root/outside.
type chainGen struct {
	src            byteSource
	root           string
	chain, outside string
	dirs           []string
	pagemaps       []string // names used in some dir
}

const (
	genPages = 12 // pages a task may map, per pagemap
	genMaxIn = 4  // dirs in a chain
)

func (g *chainGen) top() string { return g.dirs[len(g.dirs)-1] }

func (g *chainGen) build(t *testing.T) {
	g.chain, g.outside = filepath.Join(g.root, "chain"), filepath.Join(g.root, "outside")
	levels := 1 + g.src.intn(genMaxIn)
	names := []string{"pagemap-1.img", "pagemap-2.img", "pagemap-shmem-9.img"}[:1+g.src.intn(3)]
	g.pagemaps = names
	for i := range levels {
		g.dirs = append(g.dirs, filepath.Join(g.chain, fmt.Sprintf("d%d", i+1)))
	}
	// mapped[name]: the pages the task had at the previous level (nil: the
	// task did not exist).
	mapped := make(map[string][]bool)
	for level, dir := range g.dirs {
		var pms []fakePagemap
		for n, name := range names {
			if level < levels-1 && g.src.intn(6) == 5 {
				mapped[name] = nil // not there at this level
				continue
			}
			prev := mapped[name]
			cur := make([]bool, genPages)
			bits := uint16(g.src.byte()) | uint16(g.src.byte())<<8
			for p := range cur {
				cur[p] = bits&(1<<p) != 0
				if prev != nil && g.src.intn(4) != 0 {
					cur[p] = prev[p] // most pages stay mapped or unmapped
				}
			}
			dirty := uint16(g.src.byte()) | uint16(g.src.byte())<<8
			lazy := g.src.byte()
			var es []fakeEntry
			for p := range cur {
				if !cur[p] {
					continue
				}
				flags := pe
				if lazy&(1<<(p%8)) != 0 {
					flags = pel
				}
				if prev != nil && prev[p] && dirty&(1<<p) == 0 {
					flags = par
				}
				// Now and then an entry that lies about its parent.
				if level > 0 && g.src.intn(40) == 39 {
					flags = par
				}
				if k := len(es); k > 0 && es[k-1].flags == flags && es[k-1].page+es[k-1].pages == uint64(p) && g.src.intn(4) != 0 {
					es[k-1].pages++
					continue
				}
				es = append(es, fakeEntry{page: uint64(p), pages: 1, flags: flags})
			}
			base := uint64(0x100 * (n + 1))
			for i := range es {
				es[i].page += base
			}
			format := g.src.intn(4)
			pms = append(pms, fakePagemap{
				name: name, pagesID: uint32(level*8 + n + 1), entries: es,
				legacy: format == 1 && !slices.ContainsFunc(es, func(e fakeEntry) bool { return e.flags == pel }),
				wide:   format == 2,
			})
			mapped[name] = cur
		}
		parent := ""
		if level > 0 {
			parent = "../" + filepath.Base(g.dirs[level-1])
		}
		writeFakeDir(t, dir, filepath.Base(dir), parent, pms...)
	}
	// The targets of hostile links: a secret, and an image dir that a
	// parent link could lead to.
	writeFakeDir(t, filepath.Join(g.outside, "img"), "outside", "",
		fakePagemap{name: "pagemap-1.img", pagesID: 1, entries: []fakeEntry{{0x100, genPages, pe}}})
	if err := os.WriteFile(filepath.Join(g.outside, "secret"), bytes.Repeat([]byte("S"), 4*genPages*int(pageSize)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// mutation says what mutate changed.
type mutation struct {
	name string
	// content: a change to what the chain says (truncation, growth, a
	// corrupted pagemap), against which the reference reads too.
	content bool
	// mustRefuse: flatten has to see the change and refuse; unsafe: with
	// ErrUnsafeImage.
	mustRefuse, unsafe bool
}

const mutationCount = 12

// mutate applies mutation number m (mod mutationCount) to a file or link
// of the dir target chooses: dir itself if its high bit is set, else the
// one at target's low bits (mod the chain's length), and of its pagemap
// target>>4 (mod their number).
func (g *chainGen) mutate(t *testing.T, m, target uint8) mutation {
	level := int(target&0x0f) % len(g.dirs)
	if target&0x80 != 0 {
		level = len(g.dirs) - 1
	}
	dir := g.dirs[level]
	inTop := level == len(g.dirs)-1
	pagemap := filepath.Join(dir, g.pagemaps[int(target>>4&0x07)%len(g.pagemaps)])
	secret := filepath.Join(g.outside, "secret")
	pages := ""
	if img, err := readPagemapFile(pagemap); err == nil {
		pages = filepath.Join(dir, pagesName(img.pagesID))
	}
	do := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	hasPages := func() bool {
		fi, err := os.Stat(pages)
		return pages != "" && err == nil && fi.Size() > 0
	}
	switch m % mutationCount {
	case 1:
		if !hasPages() {
			break
		}
		do(os.Remove(pages))
		do(os.Symlink(secret, pages))
		return mutation{name: "symlinked pages " + pages, mustRefuse: inTop, unsafe: true}
	case 2:
		if !hasPages() {
			break
		}
		do(os.Remove(pages))
		do(os.Link(secret, pages))
		return mutation{name: "hard-linked pages " + pages, mustRefuse: inTop, unsafe: true}
	case 3:
		if !hasPages() {
			break
		}
		fi, err := os.Stat(pages)
		do(err)
		do(os.Truncate(pages, fi.Size()-1-int64(g.src.intn(int(pageSize)))%fi.Size()))
		return mutation{name: "truncated " + pages, content: true, mustRefuse: inTop}
	case 4:
		if !hasPages() {
			break
		}
		fi, err := os.Stat(pages)
		do(err)
		do(os.Truncate(pages, fi.Size()+int64(pageSize)))
		return mutation{name: "grown " + pages, content: true}
	case 5:
		if !hasPages() {
			break
		}
		do(os.Remove(pages))
		do(unix.Mkfifo(pages, 0o600))
		return mutation{name: "FIFO " + pages, mustRefuse: inTop, unsafe: true}
	case 6, 7, 8, 9:
		if level == 0 {
			break
		}
		link := filepath.Join(dir, parentLinkName)
		to := map[uint8]string{
			6: g.dirs[level-1],                // absolute
			7: "../../outside/img",            // escaping
			8: "../" + filepath.Base(g.top()), // a loop, or a dir that is flattened
			9: "../via/img",                   // through a symlinked dir
		}[m%mutationCount]
		if m%mutationCount == 8 && inTop {
			to = "."
		}
		if m%mutationCount == 9 {
			do(os.Symlink("../outside", filepath.Join(g.chain, "via")))
		}
		do(os.Remove(link))
		do(os.Symlink(to, link))
		return mutation{name: "parent link " + link + " -> " + to, mustRefuse: true, unsafe: true}
	case 10:
		if _, err := os.Lstat(pagemap); err != nil {
			break
		}
		do(os.Remove(pagemap))
		do(os.Symlink(filepath.Join(g.outside, "img", "pagemap-1.img"), pagemap))
		return mutation{name: "symlinked pagemap " + pagemap, mustRefuse: inTop, unsafe: true}
	case 11:
		b, err := os.ReadFile(pagemap)
		if err != nil || len(b) == 0 {
			break
		}
		for range 1 + g.src.intn(3) {
			b[g.src.intn(len(b))] ^= 1 << g.src.intn(8)
		}
		do(os.WriteFile(pagemap, b, 0o600))
		return mutation{name: "corrupted " + pagemap, content: true}
	}
	return mutation{name: "none"}
}

// refMemoryOfDir is memoryOfDir without t: what CRIU's restore would read
// for every pagemap of dir, or why it could not.
func refMemoryOfDir(dir string) (map[string]map[uint64]uint64, error) {
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	r := &refReader{pagemaps: map[string]*refPagemap{}}
	defer r.close()
	all := make(map[string]map[uint64]uint64)
	buf := make([]byte, pageSize)
	for _, de := range names {
		name := de.Name()
		if !isPagemapName(name) {
			continue
		}
		top, err := r.pagemap(dir, name)
		if err != nil {
			return nil, err
		}
		mem := make(map[uint64]uint64, len(top.pages))
		for vaddr := range top.pages {
			if err := r.readPage(dir, name, vaddr, buf); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			mem[vaddr] = maphash.Bytes(digestSeed, buf)
		}
		all[name] = mem
	}
	return all, nil
}

func maps2Equal(a, b map[string]map[uint64]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || len(av) != len(bv) {
			return false
		}
		for p, h := range av {
			if bh, ok := bv[p]; !ok || bh != h {
				return false
			}
		}
	}
	return true
}

// checkFlatChain is checkFlat without t.
func checkFlatChain(dir string) error {
	names, err := dirNames(dir)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, name := range names {
		switch {
		case name == parentLinkName:
			return fmt.Errorf("%s: parent link left", dir)
		case strings.HasPrefix(name, tempPrefix):
			return fmt.Errorf("%s: temporary file %s left", dir, name)
		case isPagemapName(name):
			img, err := readPagemapFile(filepath.Join(dir, name))
			if err != nil {
				return err
			}
			if img.hasParentEntries() {
				return fmt.Errorf("%s: PE_PARENT entries left", name)
			}
			used[pagesName(img.pagesID)] = true
		}
	}
	for _, name := range names {
		if _, ok := pagesID(name); ok && !used[name] {
			return fmt.Errorf("%s: %s is used by no pagemap", dir, name)
		}
	}
	return nil
}
