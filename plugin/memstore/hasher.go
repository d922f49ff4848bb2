package memstore

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// hasher hashes an ingest's bytes behind its writes, on a goroutine of its
// own, so that a write returns as soon as its bytes are copied into the
// store. Through containerd's content proxy every 32 KiB write is a
// synchronous round trip whose reply waits for the write; hashing inside
// the write would add its time (≈ 16 µs per 32 KiB with SHA-NI, several
// times that without) to every round trip, while behind the write it runs
// as the client prepares the next one. Digests wait for the hash to catch
// up, so nothing the content API promises changes.
//
// The goroutine runs only while there is something to hash and exits when
// the queue is empty: an ingest that is abandoned, aborted or never
// written holds none.
type hasher struct {
	mu       sync.Mutex
	idle     sync.Cond // signalled when the goroutine exits
	running  bool
	queue    [][]byte // added, not yet taken by the goroutine
	digester digest.Digester
}

func newHasher(alg digest.Algorithm) *hasher {
	h := &hasher{digester: alg.Digester()}
	h.idle.L = &h.mu
	return h
}

// add queues p to be hashed after everything added before it. p must not
// change afterwards: it is a part of the ingest's buffer that later writes
// do not touch (a buffer only appends, and Truncate waits for the hasher
// before cutting).
func (h *hasher) add(p []byte) {
	h.mu.Lock()
	h.queue = append(h.queue, p)
	if !h.running {
		h.running = true
		go h.run()
	}
	h.mu.Unlock()
}

// run hashes what is queued until the queue is empty. Only one run goroutine
// exists at a time (running), so it owns the digester while it runs.
func (h *hasher) run() {
	hash := h.digester.Hash()
	var batch [][]byte
	for {
		h.mu.Lock()
		if len(h.queue) == 0 {
			h.running = false
			h.idle.Broadcast()
			h.mu.Unlock()
			return
		}
		// Swap the queue for the emptied batch: neither reallocates
		// once both have grown to the usual backlog.
		batch, h.queue = h.queue, batch[:0]
		h.mu.Unlock()
		for i, p := range batch {
			hash.Write(p)
			batch[i] = nil // let a truncated or committed buffer go
		}
	}
}

// wait returns once everything added is hashed; the digester is then the
// caller's until the next add.
func (h *hasher) wait() {
	h.mu.Lock()
	for h.running {
		h.idle.Wait()
	}
	h.mu.Unlock()
}

// digest is the digest of everything added.
func (h *hasher) digest() digest.Digest {
	h.wait()
	return h.digester.Digest()
}

// algorithm is the algorithm h hashes with.
func (h *hasher) algorithm() digest.Algorithm {
	h.wait()
	return h.digester.Digest().Algorithm()
}

// rehash starts over with alg on the whole of data, synchronously: after a
// truncate, or when the algorithm changes.
func (h *hasher) rehash(alg digest.Algorithm, data *buffer) {
	h.wait()
	h.digester = alg.Digester()
	data.WriteTo(h.digester.Hash())
}
