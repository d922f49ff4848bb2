package contentservice

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	bolt "go.etcd.io/bbolt"

	"github.com/precopy/precopy/plugin/memstore"
)

// TestContentSuiteUnderContainerdMetadata runs the conformance suites on
// the whole stack containerd builds for a content proxy plugin: its
// metadata store (namespaces, leases, shared content) over its proxy client
// over the content service over memstore. The context wrapper gives each
// test its own namespace, as containerd's own metadata test does.
func TestContentSuiteUnderContainerdMetadata(t *testing.T) {
	stack := func(opts ...metadata.DBOpt) testsuite.StoreInitFn {
		return func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
			store, err := memstore.New()
			if err != nil {
				return nil, nil, nil, err
			}
			client, stop := serve(t, root, store)
			db, err := bolt.Open(filepath.Join(root, "metadata.db"), 0o600, nil)
			if err != nil {
				stop()
				return nil, nil, nil, err
			}
			var n atomic.Uint64
			name := testsuite.Name(ctx)
			ctx = testsuite.SetContextWrapper(ctx, func(ctx context.Context, sharedNS bool) (context.Context, func(context.Context) error, error) {
				ns := fmt.Sprintf("%s-n%d", name, n.Add(1))
				ctx = namespaces.WithNamespace(ctx, ns)
				if sharedNS {
					if err := db.Update(func(tx *bolt.Tx) error {
						return metadata.NewNamespaceStore(tx).SetLabel(ctx, ns, labels.LabelSharedNamespace, "true")
					}); err != nil {
						return nil, nil, err
					}
				}
				return ctx, func(context.Context) error { return nil }, nil
			})
			return ctx, metadata.NewDB(db, client, nil, opts...).ContentStore(), func() error {
				return errors.Join(db.Close(), stop())
			}, nil
		}
	}
	testsuite.ContentSuite(t, "metadata", stack())
	testsuite.ContentCrossNSSharedSuite(t, "metadata", stack())
	testsuite.ContentCrossNSIsolatedSuite(t, "metadata", stack(metadata.WithPolicyIsolated))
	testsuite.ContentSharedNSIsolatedSuite(t, "metadata", stack(metadata.WithPolicyIsolated))
}
