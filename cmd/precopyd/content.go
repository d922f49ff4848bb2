package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	units "github.com/docker/go-units"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/precopy/precopy/plugin/inventory"
	"github.com/precopy/precopy/plugin/memstore"
	"github.com/precopy/precopy/plugin/persist"
)

// inventoryFile, in the state dir, records what the content store holds,
// so that the next precopyd can say what was lost (plugin/inventory).
const inventoryFile = "content.inventory"

// contentStore is the content store with what keeps track of it.
type contentStore struct {
	store     *memstore.Store
	inventory *inventory.Inventory
	persist   *persist.Dir // nil: memory only
}

// openContent creates the content store, recovers what the persist dir
// holds, and logs (and marks, for clear not-found errors) what an earlier
// precopyd held that is lost.
func openContent(ctx context.Context, cfg config) (_ *contentStore, retErr error) {
	invPath := filepath.Join(cfg.stateDir, inventoryFile)
	held, found, err := inventory.Read(invPath)
	if err != nil {
		return nil, err
	}
	// Rewritten with what it held, so a crash during recovery loses
	// nothing of the record.
	c := &contentStore{}
	if c.inventory, err = inventory.Create(invPath, held); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			c.close(ctx)
		}
	}()
	opts := []memstore.Option{memstore.WithLimit(cfg.contentLimit), memstore.WithObserver(c.inventory)}
	if cfg.persistDir != "" {
		if c.persist, err = persist.Open(ctx, cfg.persistDir); err != nil {
			return nil, err
		}
		opts = append(opts, memstore.WithObserver(c.persist))
	}
	if c.store, err = memstore.New(opts...); err != nil {
		return nil, err
	}

	if c.persist == nil {
		c.reportMemoryOnly(ctx, held, found)
		return c, nil
	}
	rec, err := c.persist.Recover(ctx, c.store.Load)
	if err != nil {
		return nil, err
	}
	c.reportRecovery(ctx, cfg.persistDir, held, rec)
	return c, nil
}

// reportMemoryOnly logs that the store starts empty and what the earlier
// precopyd held, now lost.
func (c *contentStore) reportMemoryOnly(ctx context.Context, held inventory.Blobs, found bool) {
	l := log.G(ctx).WithField("persist_dir", "none: content is held in memory only")
	switch {
	case !found:
		l.Info("no record of an earlier precopyd's content: nothing to recover")
	case len(held) == 0:
		l.Info("the earlier precopyd held no content: nothing lost")
	default:
		lost := digests(held)
		c.lose(ctx, held, lost, "lost when precopyd restarted: it held content in memory only (no --persist-dir)")
		l.WithField("digests", abbreviate(lost, 10)).Warnf("%d blobs (%s) the earlier precopyd held in memory only are lost; containerd still lists them and reading them fails with not found",
			len(lost), units.BytesSize(float64(held.Size())))
	}
	if err := c.inventory.Err(); err != nil {
		log.G(ctx).WithError(err).Warn("the content inventory cannot be written: a restart will not be able to say what was lost")
	}
}

// reportRecovery logs what was recovered and what of the earlier
// precopyd's content was not.
func (c *contentStore) reportRecovery(ctx context.Context, dir string, held inventory.Blobs, rec persist.Recovery) {
	var size int64
	got := map[digest.Digest]bool{}
	for _, info := range rec.Recovered {
		got[info.Digest] = true
		size += info.Size
	}
	log.G(ctx).WithField("persist_dir", dir).Infof("recovered %d blobs (%s) from the persist dir", len(rec.Recovered), units.BytesSize(float64(size)))

	var unwritten []digest.Digest
	for d := range held {
		if _, refused := rec.Refused[d]; !got[d] && !refused {
			unwritten = append(unwritten, d)
		}
	}
	slices.Sort(unwritten)
	if len(unwritten) > 0 {
		c.lose(ctx, held, unwritten, "lost when precopyd restarted: not yet written to its --persist-dir")
		log.G(ctx).WithField("digests", abbreviate(unwritten, 10)).Warnf("%d blobs the earlier precopyd held were not yet written to the persist dir and are lost", len(unwritten))
	}
	for d, err := range rec.Refused {
		c.lose(ctx, held, []digest.Digest{d}, fmt.Sprintf("lost when precopyd restarted: its copy in --persist-dir was not recovered (%v)", err))
	}
}

// lose marks lost blobs in the store and drops them from the inventory:
// reported once, not at every start.
func (c *contentStore) lose(ctx context.Context, held inventory.Blobs, lost []digest.Digest, why string) {
	c.store.MarkLost(lost, why)
	for _, d := range lost {
		if _, ok := held[d]; ok {
			c.inventory.Deleted(d)
		}
	}
}

func digests(b inventory.Blobs) []digest.Digest {
	ds := make([]digest.Digest, 0, len(b))
	for d := range b {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds
}

// abbreviate joins the first n of ds and says how many more there are.
func abbreviate(ds []digest.Digest, n int) string {
	s := make([]string, 0, n)
	for _, d := range ds[:min(n, len(ds))] {
		s = append(s, d.String())
	}
	if len(ds) > n {
		return fmt.Sprintf("%s and %d more", strings.Join(s, ", "), len(ds)-n)
	}
	return strings.Join(s, ", ")
}

// close writes what the persist dir is still owed and closes the
// inventory.
func (c *contentStore) close(ctx context.Context) error {
	var errs []error
	if c.persist != nil {
		if m := c.persist.Metrics(); m.PendingBlobs > 0 {
			log.G(ctx).Infof("writing %d blobs (%s) still owed to the persist dir", m.PendingBlobs, units.BytesSize(float64(m.PendingBytes)))
		}
		errs = append(errs, c.persist.Close())
	}
	if c.inventory != nil {
		errs = append(errs, c.inventory.Close())
	}
	return errors.Join(errs...)
}
