//go:build linux

package shim

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"

	"github.com/precopy/precopy/snapshotter/pin"
	"github.com/precopy/precopy/snapshotter/pinservice"
)

// precopydPinner is a pinner that asks precopyd's pins service: precopyd
// copies the layer on its tmpfs and serves the copy to Mounts() of that
// snapshot until Unpin (or its --pin-ttl).
type precopydPinner struct {
	addr   string
	mu     sync.Mutex
	client *pinservice.Client
}

// newPrecopydPinner is the pinner of precopyd at socket addr. It connects
// now if precopyd is there, not inside a checkpoint's frozen window.
func newPrecopydPinner(addr string) pinner {
	p := &precopydPinner{addr: addr}
	p.dial()
	return p
}

// dial is the client of precopyd, made on the first call that finds its
// socket.
func (p *precopydPinner) dial() (*pinservice.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		return p.client, nil
	}
	if _, err := os.Stat(p.addr); err != nil {
		return nil, fmt.Errorf("precopyd (%s): no socket: %w", p.addr, errdefs.ErrUnavailable)
	}
	c, err := pinservice.Dial(p.addr)
	if err != nil {
		return nil, err
	}
	c.Connect()
	p.client = c
	return c, nil
}

func (p *precopydPinner) Pin(ctx context.Context, upper string) (pinResult, error) {
	c, err := p.dial()
	if err != nil {
		return pinResult{}, err
	}
	res, err := c.Pin(ctx, upper)
	if err != nil {
		return pinResult{}, fmt.Errorf("precopyd (%s): %w", p.addr, err)
	}
	return pinResult{Bytes: res.Bytes, Files: res.Files, Cost: res.Cost, Where: fmt.Sprintf("precopyd %s: %s", p.addr, res.Where)}, nil
}

func (p *precopydPinner) Unpin(ctx context.Context, upper string) error {
	c, err := p.dial()
	if err != nil {
		return err
	}
	if err := c.Unpin(ctx, upper); err != nil {
		return fmt.Errorf("precopyd (%s): %w", p.addr, err)
	}
	return nil
}

// writableLayer is the writable dir of a rootfs given as mounts, which a
// pinner pins: see pin.UpperDir. "" unless the rootfs is one mount.
func writableLayer(rootfs []*types.Mount) string {
	if len(rootfs) != 1 {
		return ""
	}
	return pin.UpperDir(rootfs[0].Type, rootfs[0].Source, rootfs[0].Options)
}
