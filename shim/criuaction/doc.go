//go:build linux

// Package criuaction is what precopy does for a container's network
// namespace around CRIU: it records, at a checkpoint, what runc tells CRIU
// not to dump (runc always passes empty-ns=net), and puts it back at a
// restore before CRIU restores the sockets, from inside CRIU as an action
// script. It also reads an image's sockets, to tell whether its TCP
// connections can be restored where the restore puts them.
//
// runc restores a container whose network namespace it creates into a
// fresh one, where loopback is down and has no address. A server bound
// to 127.0.0.1 is unreachable there, and CRIU cannot re-create the TCP
// connections it dumped (soccr: "Can't connect inet socket back: Network is
// unreachable"): the restore fails. CRIU runs its action scripts with
// CRTOOLS_SCRIPT_ACTION set; "setup-namespaces" comes once the restored
// root task has created its namespaces and before any task restores its
// files (criu/cr-restore.c, restore_root_task), with CRTOOLS_INIT_PID (that
// task) and CRTOOLS_IMAGE_DIR. runc handles CRIU's notifications over RPC
// (libcontainer/criu_linux.go: setup-namespaces runs the spec's prestart
// and createRuntime hooks, nothing else) and CRIU still runs the action
// scripts of its config file after each one (criu/action-scripts.c,
// run_scripts), so precopy's shim binary serves as the script: Main,
// before the shim's own main, when CRTOOLS_SCRIPT_ACTION is set.
package criuaction
