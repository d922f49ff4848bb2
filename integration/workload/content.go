package workload

import "encoding/binary"

// PageSize is the unit of rewriting and verification. It matches the
// kernel's page size on the platforms we test, so one rewritten page dirties
// exactly one page for CRIU's dirty tracking.
const PageSize = 4096

const (
	wordSize    = 8
	wordsInPage = PageSize / wordSize
	// golden is splitmix64's increment (2^64 / phi).
	golden = 0x9e3779b97f4a7c15
)

// mix is splitmix64's finalizer: a cheap bijection on uint64 with good
// avalanche, so nearby (seed, page, epoch) triples give unrelated content.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// pageKey derives the generator state for one version of one page. Every
// (page, epoch) pair gets its own stream, so a stale page (an older epoch) or
// a page from elsewhere (another index) is caught, not just a zeroed one.
func pageKey(seed, page, epoch uint64) uint64 {
	return mix(mix(mix(seed)^page) ^ epoch)
}

// fillPage writes the splitmix64 stream that starts at key into one page.
func fillPage(dst []byte, key uint64) {
	dst = dst[:PageSize]
	s := key
	for i := 0; i < wordsInPage; i++ {
		s += golden
		binary.LittleEndian.PutUint64(dst[i*wordSize:], mix(s))
	}
}

// pageMatches reports whether a page holds the stream that starts at key. It
// stops at the first wrong word: only whether the page is bad matters.
func pageMatches(src []byte, key uint64) bool {
	src = src[:PageSize]
	s := key
	for i := 0; i < wordsInPage; i++ {
		s += golden
		if binary.LittleEndian.Uint64(src[i*wordSize:]) != mix(s) {
			return false
		}
	}
	return true
}
