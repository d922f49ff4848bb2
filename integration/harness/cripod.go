package harness

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/integration/workload"
)

// MemloadPod is a pod sandbox with one memload container, as the kubelet
// would make them: the host's network or the pod's own, the container in
// its own pid namespace (Kubernetes' default without
// shareProcessNamespace) and the pod's IPC namespace.
type MemloadPod struct {
	ID, ContainerID string
	Config          *runtime.PodSandboxConfig
}

// MemloadPodSpec says how to make a MemloadPod.
type MemloadPodSpec struct {
	// Name is the pod's; Handler the runtime handler it runs on.
	Name, Handler string
	// PodAnnotations and ContainerAnnotations go on the pod and on its
	// container; the handlers pass io.precopy.* of both to the shim.
	PodAnnotations, ContainerAnnotations map[string]string
	// Command is the container's command; nil runs memload.
	Command []string
	// Args are memload's (or Command's).
	Args []string
	// LogDir is the pod's log directory.
	LogDir string
	// PodNetwork gives the pod a network namespace of its own, as most
	// Kubernetes pods have (podNetworkConfig; needs the CNI plugins of
	// `make deps` and a kernel with tap links); else it uses the host's
	// (hostNetwork: true), which needs no CNI.
	PodNetwork bool
}

func (s MemloadPodSpec) namespaces() *runtime.NamespaceOption {
	ns := &runtime.NamespaceOption{
		Network: runtime.NamespaceMode_NODE,
		Pid:     runtime.NamespaceMode_CONTAINER,
		Ipc:     runtime.NamespaceMode_POD,
	}
	if s.PodNetwork {
		ns.Network = runtime.NamespaceMode_POD
	}
	return ns
}

// CreateMemloadPod runs a pod and creates (not starts) its memload
// container. On error after the pod ran, the pod is returned with the
// error, for the caller to remove.
func (d *Daemon) CreateMemloadPod(ctx context.Context, cri *CRIClient, spec MemloadPodSpec) (MemloadPod, error) {
	config := &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: spec.Name, Uid: fmt.Sprintf("%s-%d", spec.Name, time.Now().UnixNano()), Namespace: "default"},
		LogDirectory: spec.LogDir,
		Annotations:  spec.PodAnnotations,
		Linux: &runtime.LinuxPodSandboxConfig{
			CgroupParent:    d.CRICgroupParent(),
			SecurityContext: &runtime.LinuxSandboxSecurityContext{NamespaceOptions: spec.namespaces()},
		},
	}
	run, err := cri.Runtime.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: config, RuntimeHandler: spec.Handler})
	if err != nil {
		return MemloadPod{}, fmt.Errorf("run pod %s on %s: %w", spec.Name, spec.Handler, err)
	}
	pod := MemloadPod{ID: run.PodSandboxId, Config: config}
	command := spec.Command
	if command == nil {
		command = []string{"/" + MemloadBinary}
	}
	created, err := cri.Runtime.CreateContainer(ctx, &runtime.CreateContainerRequest{
		PodSandboxId: pod.ID,
		Config: &runtime.ContainerConfig{
			Metadata:    &runtime.ContainerMetadata{Name: "memload"},
			Image:       &runtime.ImageSpec{Image: MemloadImage},
			Command:     command,
			Args:        spec.Args,
			LogPath:     "memload.log",
			Annotations: spec.ContainerAnnotations,
			Linux: &runtime.LinuxContainerConfig{
				SecurityContext: &runtime.LinuxContainerSecurityContext{NamespaceOptions: spec.namespaces()},
			},
		},
		SandboxConfig: config,
	})
	if err != nil {
		return pod, fmt.Errorf("create container in pod %s: %w", spec.Name, err)
	}
	pod.ContainerID = created.ContainerId
	return pod, nil
}

// RemovePod stops and removes a pod with its containers, as the kubelet
// does when a pod is deleted.
func (c *CRIClient) RemovePod(ctx context.Context, id string) error {
	if _, err := c.Runtime.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop pod %s: %w", id, err)
	}
	if _, err := c.Runtime.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove pod %s: %w", id, err)
	}
	return nil
}

// WaitCRIMemload waits until memload in CRI container id has filled its
// memory and written its first status.
func (d *Daemon) WaitCRIMemload(ctx context.Context, id string) error {
	status := filepath.Join(d.CRIRootfsPath(id), "status.json")
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		st, err := workload.ReadStatus(status)
		if err == nil && st.Counter > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("memload in CRI container %s never reported: %w (%v)", id, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CRIMemload runs `memload <subcommand>` in CRI container id through
// ExecSync (what `kubectl exec` ends in) and parses what it prints.
func (c *CRIClient) CRIMemload(ctx context.Context, id, subcommand string) (workload.Status, error) {
	resp, err := c.Runtime.ExecSync(ctx, &runtime.ExecSyncRequest{
		ContainerId: id, Cmd: []string{"/" + MemloadBinary, subcommand}, Timeout: 120,
	})
	if err != nil {
		return workload.Status{}, fmt.Errorf("exec memload %s in %s: %w", subcommand, id, err)
	}
	if resp.ExitCode != 0 {
		return workload.Status{}, fmt.Errorf("memload %s in %s exited %d: %s", subcommand, id, resp.ExitCode, resp.Stderr)
	}
	st, err := workload.ParseStatus(resp.Stdout)
	if err != nil {
		return st, fmt.Errorf("memload %s in %s: %w: %q", subcommand, id, err, resp.Stdout)
	}
	return st, nil
}
