// Package warrentest builds and runs the warren binary for tests and
// benchmarks that need the real process: the binary, an environment of its
// own, an address for its health server, its output (Process), and the
// HTTP endpoint it hands messages to (Endpoint). The fault, cluster and
// end-to-end suites start warren and its endpoint with it; the broker side
// is internal/brokertest's.
package warrentest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
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
// listens on (FreePort).
func FreeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// FreePort returns a port nobody listens on, for a process to listen on
// later. It is below the range the kernel hands out to outgoing
// connections (32768 and up): a port from that range, free when it is
// picked, may be a new connection's own by the time the process binds it
// ("address already in use": make test's packages connect by the
// thousand meanwhile). It leaves out RabbitMQ's defaults (5672, and 25672
// on of its distribution).
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort() (int, error) {
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if p >= 25672 && p <= 25700 {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("0.0.0.0", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		return p, nil
	}
	return 0, errors.New("find a free port: none free of 1000 tried")
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
