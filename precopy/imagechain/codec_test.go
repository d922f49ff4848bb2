package imagechain

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
)

// critDecode reads a pagemap with crit's decoder.
func critDecode(t testing.TB, path string) (uint32, []entry, bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapEntry{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Magic != pagemapMagic {
		t.Fatalf("magic %s", img.Magic)
	}
	var es []entry
	wideAny := false
	for _, ce := range img.Entries[1:] {
		e, wide, err := entryFromProto(ce.Message.(*pagemap.PagemapEntry))
		if err != nil {
			t.Fatal(err)
		}
		wideAny = wideAny || wide
		es = append(es, e)
	}
	return img.Entries[0].Message.(*pagemap.PagemapHead).GetPagesId(), es, wideAny
}

// critEncode writes img with crit's encoder and returns the bytes.
func critEncode(t testing.TB, path string, img *pagemapImage) []byte {
	t.Helper()
	id := img.pagesID
	ci := &crit.CriuImage{Magic: pagemapMagic, Entries: []*crit.CriuEntry{{Message: &pagemap.PagemapHead{PagesId: &id}}}}
	for _, e := range img.entries {
		pe, err := e.toProto(img.wide)
		if err != nil {
			t.Fatal(err)
		}
		ci.Entries = append(ci.Entries, &crit.CriuEntry{Message: pe})
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := crit.New(nil, f, "", false, false).Encode(ci); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCodecMatchesCrit checks the buffered codec against crit: same
// entries decoded from crit-written images (current, pre-flags and CRIU
// 4.2+ formats), same bytes encoded.
func TestCodecMatchesCrit(t *testing.T) {
	dir := t.TempDir()
	for _, pm := range []fakePagemap{
		{name: "pagemap-1.img", pagesID: 3, entries: []fakeEntry{{0x10, 2, pe}, {0x12, 5, par}, {0x20, 1, pel}}},
		{name: "pagemap-2.img", pagesID: 4, legacy: true, entries: []fakeEntry{{0x10, 2, pe}, {0x12, 5, par}}},
		{name: "pagemap-3.img", pagesID: 5, wide: true, entries: []fakeEntry{{0x10, 2, pe}, {0x12, 1 << 20, par}}},
		{name: "pagemap-4.img", pagesID: 6},
	} {
		writeFakePagemap(t, dir, "x", pm)
		path := filepath.Join(dir, pm.name)
		img, err := readPagemap(path)
		if err != nil {
			t.Fatal(err)
		}
		id, es, wide := critDecode(t, path)
		if img.pagesID != id || !slices.Equal(img.entries, es) || img.wide != wide {
			t.Errorf("%s: decoded %d %v wide %v, crit %d %v wide %v", pm.name, img.pagesID, img.entries, img.wide, id, es, wide)
		}
		ours, err := encodePagemap(img)
		if err != nil {
			t.Fatal(err)
		}
		theirs := critEncode(t, filepath.Join(dir, "crit-"+pm.name), img)
		if !bytes.Equal(ours, theirs) {
			t.Errorf("%s: encoded\n%x\ncrit encodes\n%x", pm.name, ours, theirs)
		}
	}
}

func TestDecodeRejectsBadImages(t *testing.T) {
	img := &pagemapImage{pagesID: 1, entries: []entry{{0x1000, 1, pe}}}
	good, err := encodePagemap(img)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-1],
		"not a pagemap": func() []byte {
			b := bytes.Clone(good)
			b[4]++
			return b
		}(),
	} {
		if _, err := decodePagemap(b); err == nil {
			t.Errorf("%s: decoded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// fragmentedPagemap has n one-page entries, alternately present and in
// parent.
func fragmentedPagemap(n int) *pagemapImage {
	img := &pagemapImage{pagesID: 1}
	for i := range n {
		flags := par
		if i%2 == 0 {
			flags = pel
		}
		img.entries = append(img.entries, entry{vaddr: uint64(0x10000+2*i) * pageSize, pages: 1, flags: flags})
	}
	return img
}

// BenchmarkPagemapCodec writes and reads a fragmented pagemap: one entry
// per page, alternately present and in parent.
func BenchmarkPagemapCodec(b *testing.B) {
	img := fragmentedPagemap(100000)
	path := filepath.Join(b.TempDir(), "pagemap-1.img")
	for b.Loop() {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := writePagemap(f, img); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if _, err := readPagemap(path); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPagemapCodecCrit is the same through crit, for comparison.
func BenchmarkPagemapCodecCrit(b *testing.B) {
	img := fragmentedPagemap(100000)
	path := filepath.Join(b.TempDir(), "pagemap-1.img")
	for b.Loop() {
		critEncode(b, path, img)
		critDecode(b, path)
	}
}
