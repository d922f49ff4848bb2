package contentservice

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// bufferPool is the gRPC server's buffer pool (frames read, messages
// materialized and marshalled). gRPC's default pool does not suit the
// content API, which moves data in messages just over 32 KiB (a 32 KiB
// write or read plus a few bytes of framing): its tiers are 16 KiB, 32 KiB
// and 1 MiB, so every such message takes a 1 MiB buffer, and the default
// pool zeroes a buffer's whole capacity on every Get. Profiled (precopyd
// under containerd's proxy writer), that clearing alone was the largest
// cost of a write on the server. Here sizes up to 64 KiB are pooled in
// 4 KiB steps and larger ones in powers of two, and nothing is zeroed: gRPC
// fills every buffer it takes before reading it.
type bufferPool struct {
	small [smallClasses]sync.Pool // index i: capacity (i+1) * smallStep
	large [largeClasses]sync.Pool // index i: capacity smallMax << (i+1)
}

const (
	smallStep    = 4 << 10
	smallMax     = 64 << 10
	smallClasses = smallMax / smallStep
	// Up to 32 MiB, twice the largest message the server accepts.
	largeClasses = 9
	largeMax     = smallMax << largeClasses
)

var _ mem.BufferPool = (*bufferPool)(nil)

// pool is the one pool of the package's servers and codec.
var pool = &bufferPool{}

// Get returns a buffer of length size; its bytes are whatever a previous
// user left.
func (p *bufferPool) Get(size int) *[]byte {
	sp, capacity := p.class(size)
	if sp == nil {
		b := make([]byte, size)
		return &b
	}
	if b, ok := sp.Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, capacity)
	return &b
}

// Put takes back a buffer Get returned (or a prefix of it).
func (p *bufferPool) Put(b *[]byte) {
	if sp, capacity := p.class(cap(*b)); sp != nil && capacity == cap(*b) {
		sp.Put(b)
	}
}

// class is the pool for buffers of size bytes and their capacity, or nil
// for sizes not pooled.
func (p *bufferPool) class(size int) (*sync.Pool, int) {
	switch {
	case size <= 0 || size > largeMax:
		return nil, 0
	case size <= smallMax:
		i := (size - 1) / smallStep
		return &p.small[i], (i + 1) * smallStep
	default:
		// The smallest power of two ≥ size, above smallMax.
		shift := bits.Len(uint(size-1)) - bits.Len(uint(smallMax-1))
		return &p.large[shift-1], smallMax << shift
	}
}
