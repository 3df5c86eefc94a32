// Package warrentest builds and runs the warren binary for tests and
// benchmarks that need the real process: the binary, an environment of its
// own, an address for its health server, its output (Process), and the
// HTTP endpoint it hands messages to (Endpoint). The fault, cluster and
// end-to-end suites start warren and its endpoint with it; the broker side
// is internal/brokertest's.
package warrentest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Build builds the warren command at pkg (a directory, as go build takes
// it) into dir with the extra go build flags and environment, and returns
// the binary's path.
func Build(dir, pkg string, env []string, flags ...string) (string, error) {
	bin := filepath.Join(dir, "warren")
	args := append(append([]string{"build"}, flags...), "-o", bin, pkg)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build warren: %w\n%s", err, out)
	}
	return bin, nil
}

// Env returns this process's environment without its WARREN_ variables,
// which the binary would take for its own, so that a warren process gets
// only those its test gives it; with gorace, not empty, as GORACE for a
// binary built with the race detector.
func Env(gorace string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WARREN_") && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	if gorace != "" {
		env = append(env, "GORACE="+gorace)
	}
	return env
}

// FreeAddr returns a loopback address, host:port, with a port nobody
// listens on.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Buffer collects a process's output while it runs: an io.Writer that is
// safe to read from while the process writes.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
