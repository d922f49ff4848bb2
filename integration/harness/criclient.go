package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// CRIClient talks to a daemon's CRI services over its socket, as the
// kubelet and crictl do.
type CRIClient struct {
	Runtime runtime.RuntimeServiceClient
	Images  runtime.ImageServiceClient

	conn *grpc.ClientConn
}

// CRI connects to the daemon's CRI services; the daemon must have been
// started with Options.CRI. Close the client when done.
func (d *Daemon) CRI() (*CRIClient, error) {
	if d.cri == nil {
		return nil, errors.New("containerd was started without CRI (harness.Options.CRI)")
	}
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to CRI at %s: %w", d.Address, err)
	}
	return &CRIClient{
		Runtime: runtime.NewRuntimeServiceClient(conn),
		Images:  runtime.NewImageServiceClient(conn),
		conn:    conn,
	}, nil
}

// Close closes the connection.
func (c *CRIClient) Close() error { return c.conn.Close() }

// removeCRIPods stops and removes every pod (with its containers) through
// CRI, then deletes whatever the CRI plugin left in its containerd
// namespace, and the runc state of those containers that runc kept
// outside the daemon's directory (handlers without runc's options).
func (d *Daemon) removeCRIPods(ctx context.Context) error {
	if d.client == nil {
		return nil
	}
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	left, err := d.client.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list CRI containers: %w", err)
	}
	var errs []error
	cri, err := d.CRI()
	if err != nil {
		return err
	}
	defer cri.Close()
	pods, err := cri.Runtime.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if err != nil {
		errs = append(errs, fmt.Errorf("list pods: %w", err))
	}
	for _, p := range pods.GetItems() {
		if _, err := cri.Runtime.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", p.Id, err))
		}
		if _, err := cri.Runtime.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Id, err))
		}
	}
	if rest, err := d.client.Containers(ctx); err == nil {
		errs = append(errs, removeContainers(ctx, d.client, rest...))
	}
	runcState := filepath.Join("/run/containerd/runc", CRINamespace)
	for _, c := range left {
		// Only this container's dir: the k8s.io dir may be another
		// containerd's.
		if err := os.RemoveAll(filepath.Join(runcState, c.ID())); err != nil {
			errs = append(errs, err)
		}
	}
	// And the k8s.io dir itself only if nothing else is in it.
	os.Remove(runcState)
	return errors.Join(errs...)
}
