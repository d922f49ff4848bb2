package harness

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/precopy/precopy/precopy"
)

// MeasureCRICheckpoint runs the workload in a pod as spec says, lets it
// settle, and checkpoints its container through CRI's CheckpointContainer
// into an archive, as the kubelet's checkpoint API does (the CRI plugin
// sends Pause, Checkpoint, Resume). It reads CRIU's statistics of the
// final dump from the archive (the plugin gives runc-v2 runtimes a work
// dir and packs its stats-dump) and precopy's report. The pod and the
// archive are removed afterwards.
func MeasureCRICheckpoint(ctx context.Context, d *Daemon, cri *CRIClient, spec MemloadPodSpec) (m Measurement, err error) {
	m.Runtime = spec.Handler
	tmp, err := os.MkdirTemp("", "precopy-cri-measure-")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(tmp)
	if spec.LogDir == "" {
		spec.LogDir = filepath.Join(tmp, "logs")
	}
	pod, err := d.CreateMemloadPod(ctx, cri, spec)
	if pod.ID != "" {
		defer func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			err = errors.Join(err, cri.RemovePod(ctx, pod.ID))
		}()
	}
	if err != nil {
		return m, err
	}
	id := pod.ContainerID
	if _, err := cri.Runtime.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: id}); err != nil {
		return m, fmt.Errorf("start container %s: %w", id, err)
	}
	if err := d.WaitCRIMemload(ctx, id); err != nil {
		return m, err
	}
	if m.Before, err = cri.CRIMemload(ctx, id, "query"); err != nil {
		return m, err
	}
	time.Sleep(2 * time.Second) // let the rewriting settle into its rate
	if _, err := cri.CRIMemload(ctx, id, "reset-gap"); err != nil {
		return m, err
	}
	archive := filepath.Join(tmp, "checkpoint.tar")
	start := time.Now()
	if _, err := cri.Runtime.CheckpointContainer(ctx, &runtime.CheckpointContainerRequest{ContainerId: id, Location: archive}); err != nil {
		return m, fmt.Errorf("checkpoint container %s: %w", id, err)
	}
	m.Wall = time.Since(start)
	after, err := cri.CRIMemload(ctx, id, "query")
	if err != nil {
		return m, err
	}
	m.Pause = after.MaxGap()
	a, err := ReadArchive(archive)
	if err != nil {
		return m, err
	}
	m.Report = a.Report
	statsDir := filepath.Join(tmp, "stats")
	if err := extractEntry(archive, "stats-dump", statsDir); err != nil {
		return m, fmt.Errorf("CRIU statistics from the archive: %w", err)
	}
	if m.Final, err = precopy.ReadDumpStats(statsDir); err != nil {
		return m, err
	}
	return m, nil
}

// extractEntry writes the archive's top-level entry name into dir.
func extractEntry(archive, name, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s has no %s", archive, name)
		}
		if err != nil {
			return err
		}
		if archiveName(h) != name {
			continue
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		return writeFrom(filepath.Join(dir, name), tr, os.O_TRUNC, 0o600)
	}
}
