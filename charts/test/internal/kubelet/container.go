package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// initEnv carries a container's spec to the init step: the test binary
// started again, in the new mount and UTS namespaces, that builds the
// container's root and execs its command.
const initEnv = "WARREN_KUBELET_CONTAINER_INIT"

// containerSpec is what the init step needs to turn itself into a
// container's process.
type containerSpec struct {
	NetNS      string   // the pod's network namespace file, joined with setns
	Hostname   string   // the pod's name, as the container's host name
	Root       string   // an empty directory: a tmpfs there becomes the root
	ReadOnly   bool     // the root is remounted read-only (readOnlyRootFilesystem)
	Mounts     []mount  // binds into the root: the image's binary, volumes
	UID, GID   int      // the user the process runs as
	Groups     []int    // supplementary groups (fsGroup)
	Argv, Env  []string // what is executed, inside the root
	WorkingDir string
}

type mount struct {
	Source, Target string // host path; path inside the container
	ReadOnly       bool
}

func init() {
	// The init step must keep its main goroutine on the thread that joins
	// the pod's network namespace, because it is that thread that execs.
	if os.Getenv(initEnv) != "" {
		runtime.LockOSThread()
	}
}

// ContainerInit turns the test binary into a container's process when the
// kubelet started it as one, and never returns then. Call it first thing in
// TestMain; it returns false in every other case.
func ContainerInit() bool {
	raw := os.Getenv(initEnv)
	if raw == "" {
		return false
	}
	var spec containerSpec
	err := json.Unmarshal([]byte(raw), &spec)
	if err == nil {
		err = spec.exec()
	}
	fmt.Fprintf(os.Stderr, "container init: %v\n", err)
	os.Exit(127)
	return true
}

// exec joins the pod's network namespace, builds the root (a tmpfs with
// /dev, /proc, /etc/ssl/certs and the mounts, as a distroless image has
// little more), drops to the container's user and executes its command.
// It runs in a mount and UTS namespace of its own (made by the clone), so
// nothing it mounts is seen outside.
func (s *containerSpec) exec() error {
	fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	unix.Close(fd)
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	// Mounts made below stay in this namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	if err := unix.Mount("tmpfs", s.Root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("mount root: %w", err)
	}
	base := []mount{{Source: "/dev", Target: "/dev"}}
	if _, err := os.Stat("/etc/ssl/certs"); err == nil {
		base = append(base, mount{Source: "/etc/ssl/certs", Target: "/etc/ssl/certs", ReadOnly: true})
	}
	for _, m := range append(base, s.Mounts...) {
		if err := bind(s.Root, m); err != nil {
			return err
		}
	}
	proc := filepath.Join(s.Root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if s.ReadOnly {
		if err := unix.Mount("", s.Root, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("remount root read-only: %w", err)
		}
	}
	if err := unix.Chroot(s.Root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	dir := s.WorkingDir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	// Go applies these to every thread of the process.
	if err := syscall.Setgroups(s.Groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setuid(s.UID); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	if len(s.Argv) == 0 {
		return errors.New("no command")
	}
	return syscall.Exec(s.Argv[0], s.Argv, s.Env)
}

// bind mounts m.Source at m.Target under root, making the mount point (a
// file for a file, a directory otherwise) in the tmpfs first.
func bind(root string, m mount) error {
	target := filepath.Join(root, m.Target)
	fi, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.Target, err)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if fi.IsDir() {
		err = os.MkdirAll(target, 0o755)
	} else {
		err = os.WriteFile(target, nil, 0o644)
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", m.Target, err)
	}
	if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("bind %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

// command returns the exec.Cmd that starts the init step for spec: this
// binary again, in new mount and UTS namespaces and a process group of its
// own (so signals to the pod reach no one else).
func (s *containerSpec) command() (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the test binary: %w", err)
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = []string{initEnv + "=" + string(raw)}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Setpgid:    true,
	}
	return cmd, nil
}
