package harness

import (
	"context"
	"fmt"
	"io"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/precopy/precopy/integration/testimage"
)

// MemloadImage is the name of the image of the test workloads: the memory
// workload as /memload, its entrypoint, and the network workload as
// /netload.
const MemloadImage = "docker.io/precopy/memload:test"

// ImportMemload builds the workload's image from the static binary (no
// registry is reachable on these machines), imports it into the namespace
// of ctx and unpacks it into the default snapshotter.
func ImportMemload(ctx context.Context, c *containerd.Client, b Binaries) error {
	return importImage(ctx, c, testimage.Spec{
		Name: MemloadImage,
		Files: []testimage.File{
			testimage.Executable("/"+MemloadBinary, b.Path(MemloadBinary)),
			testimage.Executable("/"+NetloadBinary, b.Path(NetloadBinary)),
		},
		Entrypoint: []string{"/" + MemloadBinary},
	})
}

// importImage builds the image spec describes, imports it into the
// namespace of ctx and unpacks it into the default snapshotter.
func importImage(ctx context.Context, c *containerd.Client, spec testimage.Spec) error {
	r, w := io.Pipe()
	go func() { w.CloseWithError(testimage.Write(w, spec)) }()
	imgs, err := c.Import(ctx, r)
	r.Close()
	if err != nil {
		return fmt.Errorf("import %s: %w", spec.Name, err)
	}
	for _, img := range imgs {
		if err := containerd.NewImage(c, img).Unpack(ctx, ""); err != nil {
			return fmt.Errorf("unpack %s: %w", img.Name, err)
		}
	}
	return nil
}
