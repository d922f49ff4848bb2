// Package persist keeps a copy of precopyd's in-memory content on disk, for
// operators who choose durability over keeping checkpoints off disk
// (precopyd --persist-dir). Blobs are written behind: a commit returns as
// soon as the blob is in memory, and one goroutine copies committed blobs
// to the directory in commit order, so a blob deleted meanwhile is deleted
// on disk too. At start, Recover loads every blob back into the store,
// which checks size and digest, so a file torn by a crash is never taken
// for a blob.
//
// Layout, everything 0600 in directories 0700:
//
//	<dir>/blobs/<algorithm>/<hex>         a blob's bytes
//	<dir>/blobs/<algorithm>/<hex>.labels  its labels as JSON, if it has any
//	<dir>/tmp/                            files being written; renamed into
//	                                      blobs/ once complete and synced
package persist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

const labelsSuffix = ".labels"

// Dir is a persistence directory with its write-behind queue. It
// implements memstore.Observer.
type Dir struct {
	path string

	mu      sync.Mutex
	cond    *sync.Cond // signalled when jobs are queued or done
	queue   []job
	closing bool
	metrics Metrics
	stopped chan struct{} // closed when the writer has exited
}

// job is one change to carry out on disk.
type job struct {
	info    content.Info
	data    content.ReaderAt // nil for a delete or a label update
	deleted bool
}

// Metrics say how far behind the directory is.
type Metrics struct {
	// PendingBlobs and PendingBytes are committed blobs not on disk yet.
	PendingBlobs int   `json:"pending_blobs"`
	PendingBytes int64 `json:"pending_bytes"`
	// WrittenBlobs and WrittenBytes count blobs written since start.
	WrittenBlobs int64 `json:"written_blobs"`
	WrittenBytes int64 `json:"written_bytes"`
	// Failures counts changes that could not be made on disk (logged):
	// such a blob is held in memory only.
	Failures int64 `json:"failures"`
}

// Open prepares the directory at path (creating it 0700; refusing one
// others can read or write), removes files a crash left half-written, and
// starts the writer. Close stops it.
func Open(ctx context.Context, path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("persist dir: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("persist dir: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("persist dir %s: not a directory", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		// Checkpoints hold process memory, secrets included.
		return nil, fmt.Errorf("persist dir %s: mode %04o lets others in; want 0700", path, perm)
	}
	for _, sub := range []string{"blobs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(path, sub), 0o700); err != nil {
			return nil, fmt.Errorf("persist dir: %w", err)
		}
	}
	tmps, err := os.ReadDir(filepath.Join(path, "tmp"))
	if err != nil {
		return nil, fmt.Errorf("persist dir: %w", err)
	}
	for _, e := range tmps {
		p := filepath.Join(path, "tmp", e.Name())
		log.G(ctx).WithField("file", p).Warn("removing a blob an earlier precopyd did not finish writing")
		if err := os.RemoveAll(p); err != nil {
			return nil, fmt.Errorf("persist dir: %w", err)
		}
	}
	d := &Dir{path: path, stopped: make(chan struct{})}
	d.cond = sync.NewCond(&d.mu)
	go d.write(log.WithLogger(context.Background(), log.G(ctx)))
	return d, nil
}

// Loader takes a recovered blob: memstore.Store.Load.
type Loader func(ctx context.Context, info content.Info, r io.Reader) error

// Recovery is what Recover found.
type Recovery struct {
	// Recovered are the blobs loaded.
	Recovered []content.Info
	// Refused are blobs whose files the loader refused, with why: torn
	// or corrupted files (removed), or blobs over the store's limit
	// (kept for a start with a higher limit).
	Refused map[digest.Digest]error
}

// Recover loads every blob in the directory with load. A file load
// refuses as not matching its digest or size (errdefs.ErrDataLoss) is
// removed; one refused for another reason, such as the store's limit, is
// kept.
func (d *Dir) Recover(ctx context.Context, load Loader) (Recovery, error) {
	rec := Recovery{Refused: map[digest.Digest]error{}}
	blobs := filepath.Join(d.path, "blobs")
	algs, err := os.ReadDir(blobs)
	if err != nil {
		return rec, fmt.Errorf("recover: %w", err)
	}
	for _, alg := range algs {
		files, err := os.ReadDir(filepath.Join(blobs, alg.Name()))
		if err != nil {
			return rec, fmt.Errorf("recover: %w", err)
		}
		for _, f := range files {
			name := f.Name()
			if strings.HasSuffix(name, labelsSuffix) {
				continue
			}
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), name)
			p := filepath.Join(blobs, alg.Name(), name)
			if err := dgst.Validate(); err != nil {
				log.G(ctx).WithField("file", p).Warn("ignoring a file in the persist dir that is not named for a digest")
				continue
			}
			info, err := d.recoverOne(ctx, dgst, p, load)
			if err == nil {
				rec.Recovered = append(rec.Recovered, info)
				continue
			}
			rec.Refused[dgst] = err
			if errdefs.IsDataLoss(err) {
				log.G(ctx).WithError(err).WithField("file", p).Error("removing a persisted blob that does not match its digest")
				os.Remove(p)
				os.Remove(p + labelsSuffix)
			} else {
				log.G(ctx).WithError(err).WithField("file", p).Error("persisted blob not recovered; file kept")
			}
		}
		// Labels whose blob is gone.
		for _, f := range files {
			if blob, ok := strings.CutSuffix(f.Name(), labelsSuffix); ok {
				if _, err := os.Stat(filepath.Join(blobs, alg.Name(), blob)); errors.Is(err, fs.ErrNotExist) {
					os.Remove(filepath.Join(blobs, alg.Name(), f.Name()))
				}
			}
		}
	}
	return rec, nil
}

func (d *Dir) recoverOne(ctx context.Context, dgst digest.Digest, path string, load Loader) (content.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return content.Info{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return content.Info{}, err
	}
	info := content.Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime()}
	if b, err := os.ReadFile(path + labelsSuffix); err == nil {
		if err := json.Unmarshal(b, &info.Labels); err != nil {
			log.G(ctx).WithError(err).WithField("digest", dgst).Warn("persisted labels unreadable; blob recovered without them")
			info.Labels = nil
		}
	}
	if err := load(ctx, info, f); err != nil {
		return content.Info{}, err
	}
	return info, nil
}

// Committed queues a new blob to be written.
func (d *Dir) Committed(info content.Info, data content.ReaderAt) {
	d.enqueue(job{info: info, data: data})
}

// Deleted queues a blob's removal.
func (d *Dir) Deleted(dgst digest.Digest) {
	d.enqueue(job{info: content.Info{Digest: dgst}, deleted: true})
}

// Updated queues a rewrite of a blob's labels.
func (d *Dir) Updated(info content.Info) {
	d.enqueue(job{info: info})
}

func (d *Dir) enqueue(j job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return
	}
	d.queue = append(d.queue, j)
	if j.data != nil {
		d.metrics.PendingBlobs++
		d.metrics.PendingBytes += j.info.Size
	}
	d.cond.Broadcast()
}

// Metrics returns the writer's progress.
func (d *Dir) Metrics() Metrics {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.metrics
}

// Flush waits until everything queued so far is on disk (or failed).
func (d *Dir) Flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.queue) > 0 {
		d.cond.Wait()
	}
}

// Close writes what is queued, then stops the writer. Changes after Close
// are not written.
func (d *Dir) Close() error {
	d.mu.Lock()
	d.closing = true
	d.cond.Broadcast()
	d.mu.Unlock()
	<-d.stopped
	return nil
}

// write carries out queued jobs in order until Close.
func (d *Dir) write(ctx context.Context) {
	defer close(d.stopped)
	d.mu.Lock()
	for {
		for len(d.queue) == 0 && !d.closing {
			d.cond.Wait()
		}
		if len(d.queue) == 0 {
			d.mu.Unlock()
			return
		}
		j := d.queue[0]
		d.mu.Unlock()

		err := d.do(j)

		d.mu.Lock()
		d.queue[0] = job{}
		d.queue = d.queue[1:]
		if j.data != nil {
			d.metrics.PendingBlobs--
			d.metrics.PendingBytes -= j.info.Size
			if err == nil {
				d.metrics.WrittenBlobs++
				d.metrics.WrittenBytes += j.info.Size
			}
		}
		if err != nil {
			d.metrics.Failures++
			log.G(ctx).WithError(err).WithField("digest", j.info.Digest).Error("persist dir: change not written; the blob is held in memory only")
		}
		d.cond.Broadcast()
	}
}

func (d *Dir) blobPath(dgst digest.Digest) string {
	return filepath.Join(d.path, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// do carries out one job.
func (d *Dir) do(j job) error {
	p := d.blobPath(j.info.Digest)
	switch {
	case j.deleted:
		err := errors.Join(removeIfExists(p), removeIfExists(p+labelsSuffix))
		if err == nil {
			err = syncDir(filepath.Dir(p))
		}
		return err
	case j.data != nil:
		if fi, err := os.Stat(p); err == nil && fi.Size() == j.info.Size {
			// Content-addressed: recovered at start, or written
			// before a delete and a new commit of the same bytes.
			return d.writeLabels(j.info)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := d.writeFile(p, io.NewSectionReader(j.data, 0, j.info.Size)); err != nil {
			return err
		}
		return d.writeLabels(j.info)
	default:
		return d.writeLabels(j.info)
	}
}

func (d *Dir) writeLabels(info content.Info) error {
	p := d.blobPath(info.Digest) + labelsSuffix
	if len(info.Labels) == 0 {
		return removeIfExists(p)
	}
	b, err := json.Marshal(info.Labels)
	if err != nil {
		return err
	}
	return d.writeFile(p, strings.NewReader(string(b)))
}

// writeFile writes r to a file in tmp/, syncs it and renames it to path,
// so that path is either absent or complete, barring a disk that lies.
func (d *Dir) writeFile(path string, r io.Reader) error {
	tmp, err := os.CreateTemp(filepath.Join(d.path, "tmp"), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, r)
	if err == nil {
		err = tmp.Sync()
	}
	if err2 := tmp.Close(); err == nil {
		err = err2
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
