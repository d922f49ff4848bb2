package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/integration/testimage"
)

// PauseImage is the pod sandbox image of the CRI tests, built from the
// pause workload (the Kubernetes pause image cannot be pulled here). The
// daemon's CRI config names it as the sandbox image.
const PauseImage = "docker.io/precopy/pause:test"

// ImportCRIImages imports the pause and memload images into the CRI
// plugin's namespace, as `ctr -n k8s.io images import` would, and waits
// until the CRI image service knows them: it learns of images from
// containerd's events, after the import returns.
func ImportCRIImages(ctx context.Context, d *Daemon, b Binaries) error {
	nsCtx := namespaces.WithNamespace(ctx, CRINamespace)
	pause := testimage.Spec{
		Name:       PauseImage,
		Files:      []testimage.File{testimage.Executable("/"+PauseBinary, b.Path(PauseBinary))},
		Entrypoint: []string{"/" + PauseBinary},
	}
	if err := importImage(nsCtx, d.Client(), pause); err != nil {
		return err
	}
	if err := ImportMemload(nsCtx, d.Client(), b); err != nil {
		return err
	}
	cri, err := d.CRI()
	if err != nil {
		return err
	}
	defer cri.Close()
	for _, ref := range []string{PauseImage, MemloadImage} {
		if err := waitCRIImage(ctx, cri, ref); err != nil {
			return err
		}
	}
	return nil
}

func waitCRIImage(ctx context.Context, cri *CRIClient, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		st, err := cri.Images.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
		if err == nil && st.GetImage() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRI never listed image %s (last error: %v): %w", ref, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
