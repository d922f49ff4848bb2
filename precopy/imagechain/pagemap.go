package imagechain

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"google.golang.org/protobuf/proto"
)

const (
	pagemapPrefix = "pagemap-" // pagemap-<pid>.img and pagemap-shmem-<shmid>.img
	pagesPrefix   = "pages-"   // pages-<pages_id>.img
	imgSuffix     = ".img"
	pagemapMagic  = "PAGEMAP"
)

// isPagemapName reports whether a file name is a pagemap image.
func isPagemapName(name string) bool {
	return strings.HasPrefix(name, pagemapPrefix) && strings.HasSuffix(name, imgSuffix)
}

// pagesName is the pages file a pagemap head's pages_id names
// (criu/image-desc.c: "pages-%u").
func pagesName(id uint32) string { return pagesPrefix + strconv.FormatUint(uint64(id), 10) + imgSuffix }

// pagesID parses a pages file name; ok is false for anything else.
func pagesID(name string) (id uint32, ok bool) {
	s, found := strings.CutPrefix(name, pagesPrefix)
	if !found {
		return 0, false
	}
	s, found = strings.CutSuffix(s, imgSuffix)
	if !found {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// pagemapImage is one decoded pagemap image.
type pagemapImage struct {
	pagesID uint32
	entries []entry // in file order
	// wide: the image stores nr_pages in CRIU 4.2+'s field 5.
	wide bool
}

// presentPages counts the pages in the image's own pages file.
func (p *pagemapImage) presentPages() uint64 {
	var n uint64
	for _, e := range p.entries {
		if e.present() {
			n += e.pages
		}
	}
	return n
}

// hasParentEntries reports whether any entry refers to the parent.
func (p *pagemapImage) hasParentEntries() bool {
	for _, e := range p.entries {
		if e.inParent() {
			return true
		}
	}
	return false
}

// maxEntryPages is how many pages one written entry may hold.
func (p *pagemapImage) maxEntryPages() uint64 {
	if p.wide {
		return math.MaxUint64
	}
	return math.MaxUint32
}

// The image framing (criu/image.c, go-criu crit's decodeImg/encodeImg):
// the IMG_COMMON magic, the PAGEMAP magic, then entries, each a
// little-endian uint32 length and a protobuf message: a pagemap_head first,
// pagemap_entry after. crit's Decode and Encode do two unbuffered syscalls
// per entry, about 5 µs an entry here (a fragmented 100k-entry pagemap:
// 1 s to read and write, ten times that under TCG), so this package frames
// the same bytes through one buffer, with crit's message types and magic
// table; the tests check it against crit both ways.
var magics = sync.OnceValue(func() magic.MagicMap { return magic.LoadMagic() })

const entryLenSize = 4

// readPagemap decodes a pagemap image.
func readPagemap(path string) (*pagemapImage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := decodePagemap(b)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return p, nil
}

func decodePagemap(b []byte) (*pagemapImage, error) {
	m := magics()
	if len(b) < 4 {
		return nil, errors.New("no magic")
	}
	v := uint64(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if v == m.ByName["IMG_COMMON"] || v == m.ByName["IMG_SERVICE"] {
		if len(b) < 4 {
			return nil, errors.New("no image magic")
		}
		v, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
	}
	if v != m.ByName[pagemapMagic] {
		return nil, fmt.Errorf("magic %#x (%s), not %s", v, m.ByValue[v], pagemapMagic)
	}
	var head pagemap.PagemapHead
	payload, b, err := nextPayload(b)
	if err != nil {
		return nil, fmt.Errorf("pagemap head: %w", err)
	}
	if err := proto.Unmarshal(payload, &head); err != nil {
		return nil, fmt.Errorf("pagemap head: %w", err)
	}
	p := &pagemapImage{pagesID: head.GetPagesId(), entries: make([]entry, 0, len(b)/16)}
	var pe pagemap.PagemapEntry // reused: each entry is converted at once
	for i := 1; len(b) > 0; i++ {
		if payload, b, err = nextPayload(b); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if err := proto.Unmarshal(payload, &pe); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		e, wide, err := entryFromProto(&pe)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		p.wide = p.wide || wide
		p.entries = append(p.entries, e)
	}
	return p, nil
}

// nextPayload splits one length-prefixed message off b.
func nextPayload(b []byte) (payload, rest []byte, err error) {
	if len(b) < entryLenSize {
		return nil, nil, fmt.Errorf("truncated length (%d bytes left)", len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	b = b[entryLenSize:]
	if uint64(len(b)) < uint64(n) {
		return nil, nil, fmt.Errorf("truncated: %d bytes, %d left", n, len(b))
	}
	return b[:n], b[n:], nil
}

// writePagemap encodes p into f.
func writePagemap(f *os.File, p *pagemapImage) error {
	b, err := encodePagemap(p)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}

func encodePagemap(p *pagemapImage) ([]byte, error) {
	m := magics()
	b := make([]byte, 0, 8+(len(p.entries)+1)*24)
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName["IMG_COMMON"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName[pagemapMagic]))
	id := p.pagesID
	b, err := appendMessage(b, &pagemap.PagemapHead{PagesId: &id})
	if err != nil {
		return nil, err
	}
	for _, e := range p.entries {
		pe, err := e.toProto(p.wide)
		if err != nil {
			return nil, err
		}
		if b, err = appendMessage(b, pe); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// appendMessage appends m's length and encoding to b.
func appendMessage(b []byte, m proto.Message) ([]byte, error) {
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b, err := proto.MarshalOptions{}.MarshalAppend(b, m)
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint32(b[at:], uint32(len(b)-at-entryLenSize))
	return b, nil
}
