package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// RuncRestored is a container runc restored from a checkpoint archive's
// CRIU images, outside containerd: containerd 2.4's CRI plugin cannot
// restore an archive (restore-via-create was removed, RestorePod is not
// in 2.4.2) and `ctr` restores only containerd's own checkpoint images.
type RuncRestored struct {
	ID string
	// Rootfs is the restored container's root filesystem: the image's
	// layers with the archive's rootfs-diff.tar on top.
	Rootfs string

	root string // runc's state dir
	env  []string
}

// RestoreArchive restores the container checkpointed in the archive at
// path with runc, under id, working in dir (which must not exist yet):
//
//  1. the archive is extracted into dir/archive;
//  2. the rootfs is the layers of the image config.dump names, read from
//     the daemon's content store (CRI's namespace), with rootfs-diff.tar
//     applied on top;
//  3. config.json is spec.dump with the root at that rootfs, the cgroup
//     under cgroupParent, no namespace paths (they named the pod's, e.g.
//     its sandbox's IPC namespace: the restored container gets fresh
//     ones), and a private copy of each bind mount's source (the pod's
//     /etc/hosts, resolv.conf, hostname and /dev/shm), so the restore
//     does not depend on the pod;
//  4. `runc restore --detach --image-path dir/archive/checkpoint`, CRIU
//     with env (see CRIUEnv) in its environment. runc hands CRIU the
//     bind mounts as external mounts and its own stdio for the pipes
//     the checkpointed process had (here /dev/null).
//
// changes, if any, change config.json's spec last.
func RestoreArchive(ctx context.Context, d *Daemon, path, id, dir, cgroupParent string, env []string, changes ...func(*specs.Spec)) (*RuncRestored, error) {
	fail := func(err error) (*RuncRestored, error) {
		return nil, fmt.Errorf("restore %s with runc: %w", path, err)
	}
	a, err := ReadArchive(path)
	if err != nil {
		return fail(err)
	}
	extracted := filepath.Join(dir, "archive")
	bundle := filepath.Join(dir, "bundle")
	r := &RuncRestored{ID: id, Rootfs: filepath.Join(bundle, "rootfs"), root: filepath.Join(dir, "runc"), env: env}
	for _, p := range []string{extracted, r.Rootfs, r.root, filepath.Join(dir, "work")} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fail(err)
		}
	}
	// CRIU checks the restored root's mode against the dumped one; image
	// layers need not have an entry for / to set it.
	if err := os.Chmod(r.Rootfs, 0o755); err != nil {
		return fail(err)
	}
	if err := a.Extract(ctx, extracted); err != nil {
		return fail(err)
	}
	config, _, err := metadata.ReadContainerCheckpointConfigDump(extracted)
	if err != nil {
		return fail(err)
	}
	if err := unpackImage(ctx, d, config.RootfsImageName, r.Rootfs); err != nil {
		return fail(err)
	}
	if err := applyTar(ctx, r.Rootfs, filepath.Join(extracted, metadata.RootFsDiffTar)); err != nil {
		return fail(fmt.Errorf("%s: %w", metadata.RootFsDiffTar, err))
	}
	spec, _, err := metadata.ReadContainerCheckpointSpecDump(extracted)
	if err != nil {
		return fail(err)
	}
	if err := restoreSpec(spec, bundle, filepath.Join(cgroupParent, id)); err != nil {
		return fail(err)
	}
	for _, change := range changes {
		change(spec)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return fail(err)
	}
	if err := r.restore(ctx, bundle, filepath.Join(extracted, metadata.CheckpointDirectory), dir); err != nil {
		return fail(err)
	}
	return r, nil
}

// restore runs runc restore. The restored process keeps runc's stdio:
// /dev/null for stdout, and for stderr a file (never a pipe, which would
// hold the wait for runc open as long as the process runs).
func (r *RuncRestored) restore(ctx context.Context, bundle, images, dir string) error {
	work := filepath.Join(dir, "work")
	stderrPath := filepath.Join(dir, "runc-restore.stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd := exec.CommandContext(ctx, "runc", "--root", r.root, "restore", "--detach", "--bundle", bundle,
		"--image-path", images, "--work-path", work, r.ID)
	cmd.Env = append(os.Environ(), r.env...)
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(stderrPath)
		log, _ := os.ReadFile(filepath.Join(work, "restore.log"))
		return fmt.Errorf("runc restore: %w: %s; restore.log ends:\n%s", err, bytes.TrimSpace(out), lastLines(string(log), 15))
	}
	return nil
}

// unpackImage unpacks the layers of image ref, from the daemon's content
// store in CRI's namespace, into dir.
func unpackImage(ctx context.Context, d *Daemon, ref, dir string) error {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	img, err := d.Client().ImageService().Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	store := d.Client().ContentStore()
	manifest, err := images.Manifest(ctx, store, img.Target, platforms.Default())
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	for _, layer := range manifest.Layers {
		ra, err := store.ReaderAt(ctx, layer)
		if err != nil {
			return fmt.Errorf("image %s: layer %s: %w", ref, layer.Digest, err)
		}
		err = applyStream(ctx, dir, content.NewReader(ra))
		ra.Close()
		if err != nil {
			return fmt.Errorf("image %s: layer %s: %w", ref, layer.Digest, err)
		}
	}
	return nil
}

// restoreSpec turns the checkpointed container's OCI spec into one runc
// can restore it with from bundle, in cgroup cgroupsPath.
func restoreSpec(spec *specs.Spec, bundle, cgroupsPath string) error {
	if spec.Root == nil || spec.Linux == nil || spec.Process == nil {
		return fmt.Errorf("%s has no root, linux or process section", metadata.SpecDumpFile)
	}
	spec.Root.Path = filepath.Join(bundle, "rootfs")
	spec.Linux.CgroupsPath = cgroupsPath
	for i := range spec.Linux.Namespaces {
		spec.Linux.Namespaces[i].Path = ""
	}
	for i, m := range spec.Mounts {
		if m.Type != "bind" && !hasOption(m.Options, "bind") && !hasOption(m.Options, "rbind") {
			continue
		}
		private := filepath.Join(bundle, "mounts", fmt.Sprint(i))
		if err := copySource(m.Source, private); err != nil {
			return fmt.Errorf("bind mount %s: %w", m.Destination, err)
		}
		spec.Mounts[i].Source = private
	}
	return nil
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// copySource copies a bind mount's source: a file's content, or an empty
// directory for a directory (the pod's /dev/shm: CRIU does not dump an
// external mount's content).
func copySource(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if fi.IsDir() {
		return os.Mkdir(dst, fi.Mode().Perm())
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFrom(dst, in, os.O_EXCL, fi.Mode().Perm())
}

// Exec runs args in the restored container and returns its standard
// output.
func (r *RuncRestored) Exec(ctx context.Context, args ...string) ([]byte, error) {
	return r.runc(ctx, append([]string{"exec", r.ID}, args...)...)
}

// Remove kills and deletes the restored container.
func (r *RuncRestored) Remove(ctx context.Context) error {
	_, err := r.runc(ctx, "delete", "--force", r.ID)
	return err
}

func (r *RuncRestored) runc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "runc", append([]string{"--root", r.root}, args...)...)
	cmd.Env = append(os.Environ(), r.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("runc %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
