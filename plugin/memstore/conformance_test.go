package memstore

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
)

// TestContentSuite runs containerd's content store conformance suite on the
// store itself. The suite's contexts carry no namespace, which suits a
// store that, like containerd's local store, has none.
func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "memstore", func(ctx context.Context, _ string) (context.Context, content.Store, func() error, error) {
		s, err := New()
		if err != nil {
			return nil, nil, nil, err
		}
		return ctx, s, func() error { return nil }, nil
	})
}
