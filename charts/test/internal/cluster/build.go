package cluster

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// errBuildImpossible marks a control-plane binary that cannot be built here:
// no go command, or no way to download the modules. Any other build error is
// a failure.
var errBuildImpossible = errors.New("control-plane binary cannot be built")

// The control-plane components, each built from the main module of the same
// name in charts/test.
const (
	KubeAPIServer         = "kube-apiserver"
	KubeControllerManager = "kube-controller-manager"
	KubeScheduler         = "kube-scheduler"
)

// networkErrors are what `go build` says when the module proxy is out of
// reach.
var networkErrors = []string{
	"dial tcp", "no such host", "i/o timeout", "network is unreachable",
	"connection refused", "TLS handshake timeout", "proxyconnect",
	"GOPROXY=off", "module lookup disabled", "GOFLAGS=-mod=vendor",
}

// APIServer returns the path of a kube-apiserver binary: Binary(t,
// KubeAPIServer).
func APIServer(t testing.TB) (string, error) {
	t.Helper()
	return Binary(t, KubeAPIServer)
}

// Binary returns the path of a control-plane binary (KubeAPIServer,
// KubeControllerManager or KubeScheduler) built from the module in
// charts/test/<component>. The binary is cached outside the repository,
// under a name made of the k8s.io/kubernetes version and a hash of that
// module's files and the Go version, so CI runs and later sessions on the
// same machine reuse it: a cold build takes about 4 minutes on 2 cores (the
// second and third component reuse most of the first's compiled packages).
// The cache is $WARREN_TEST_CACHE, else /var/cache/warren-test when
// writable, else the user's cache directory.
func Binary(t testing.TB, component string) (string, error) {
	t.Helper()
	src, err := sourceDir(component)
	if err != nil {
		return "", err
	}
	version, key, err := buildKey(src)
	if err != nil {
		return "", err
	}
	cache, err := cacheDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cache, fmt.Sprintf("%s-%s-%s", component, version, key))
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}

	// One build at a time, across test processes: two go builds of
	// k8s.io/kubernetes at once only slow each other down.
	unlock, err := lock(filepath.Join(cache, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // built by another process meanwhile
	}

	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%w: go not found: %v", errBuildImpossible, err)
	}
	t.Logf("building %s %s into %s (minutes on 2 cores, once per version)", component, version, bin)
	started := time.Now()
	tmp := bin + ".tmp"
	cmd := exec.Command(goCmd, "build", "-trimpath", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		msg := strings.TrimSpace(string(out))
		for _, s := range networkErrors {
			if strings.Contains(msg, s) {
				return "", fmt.Errorf("%w: the Go module proxy is out of reach and no %s is cached in %s: %s", errBuildImpossible, component, cache, lastLines(msg, 5))
			}
		}
		return "", fmt.Errorf("build %s %s: %v\n%s", component, version, err, lastLines(msg, 30))
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("cache %s: %w", component, err)
	}
	t.Logf("built %s %s in %v", component, version, time.Since(started).Round(time.Second))
	return bin, nil
}

// sourceDir is charts/test/<component>, found from this file's path.
func sourceDir(component string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("locate %s sources: no caller information", component)
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", component)
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("locate %s sources: %w", component, err)
	}
	return dir, nil
}

// buildKey returns the k8s.io/kubernetes version the module requires and a
// short hash of its go.mod, go.sum and main.go and of the Go version.
func buildKey(src string) (version, key string, err error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", "", fmt.Errorf("build key: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
		if name == "go.mod" {
			version = requiredVersion(string(b), "k8s.io/kubernetes")
		}
	}
	if version == "" {
		return "", "", fmt.Errorf("build key: %s/go.mod requires no k8s.io/kubernetes", src)
	}
	goVersion, err := exec.Command("go", "env", "GOVERSION").Output()
	if err == nil {
		h.Write(goVersion)
	}
	return version, hex.EncodeToString(h.Sum(nil))[:12], nil
}

// requiredVersion finds "require <module> <version>" in a go.mod, on its own
// line or in a require block.
func requiredVersion(gomod, module string) string {
	sc := bufio.NewScanner(strings.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return ""
}

func cacheDir() (string, error) {
	candidates := []string{os.Getenv("WARREN_TEST_CACHE"), "/var/cache/warren-test"}
	if d, err := os.UserCacheDir(); err == nil {
		candidates = append(candidates, filepath.Join(d, "warren-test"))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			continue
		}
		if f, err := os.CreateTemp(dir, ".probe"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: no writable cache directory (set WARREN_TEST_CACHE)", errBuildImpossible)
}

func lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
