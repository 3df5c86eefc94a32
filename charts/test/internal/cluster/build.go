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

// The components, each built from a main module in charts/test.
const (
	KubeAPIServer         = "kube-apiserver"
	KubeControllerManager = "kube-controller-manager"
	KubeScheduler         = "kube-scheduler"
	KEDAOperator          = "keda-operator"
	KEDAAdapter           = "keda-adapter"
)

// source says where a component's main package is and what version names
// it.
type source struct {
	module  string // the directory of the main module, under charts/test
	pkg     string // the main package, relative to the module
	version string // the required module whose version names the binary
	// ldflags stamps the version into the binary, where it says it.
	ldflags func(version string) string
}

// kedaVersion stamps KEDA's binaries, which otherwise call themselves
// "main" in their logs and metrics.
func kedaVersion(v string) string { return "-X=github.com/kedacore/keda/v2/version.Version=" + v }

var sources = map[string]source{
	KubeAPIServer:         {module: KubeAPIServer, pkg: ".", version: "k8s.io/kubernetes"},
	KubeControllerManager: {module: KubeControllerManager, pkg: ".", version: "k8s.io/kubernetes"},
	KubeScheduler:         {module: KubeScheduler, pkg: ".", version: "k8s.io/kubernetes"},
	// KEDA's two main packages, copied from its cmd/ (a main package cannot
	// be imported) into one module that requires github.com/kedacore/keda/v2.
	KEDAOperator: {module: "keda", pkg: "./operator", version: "github.com/kedacore/keda/v2", ldflags: kedaVersion},
	KEDAAdapter:  {module: "keda", pkg: "./adapter", version: "github.com/kedacore/keda/v2", ldflags: kedaVersion},
}

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

// Binary returns the path of a component's binary (KubeAPIServer,
// KubeControllerManager, KubeScheduler, KEDAOperator or KEDAAdapter) built
// from its module in charts/test. The binary is cached outside the
// repository, under a name made of the version it is built from
// (k8s.io/kubernetes or KEDA) and a hash of that module's files and the Go
// version, so CI runs and later sessions on the same machine reuse it: a
// cold build of the control plane takes about 4 minutes on 2 cores (the
// second and third component reuse most of the first's compiled packages),
// KEDA's operator about 9 and 3.4 GiB, its adapter 1 more. Builds run at
// the lowest CPU priority: the machine is shared. The cache is
// $WARREN_TEST_CACHE, else /var/cache/warren-test when writable, else the
// user's cache directory.
func Binary(t testing.TB, component string) (string, error) {
	t.Helper()
	s, ok := sources[component]
	if !ok {
		return "", fmt.Errorf("build %s: unknown component", component)
	}
	src, err := sourceDir(s.module)
	if err != nil {
		return "", err
	}
	version, key, err := buildKey(src, s.pkg, s.version)
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
	args := []string{"build", "-trimpath", "-o", tmp}
	if s.ldflags != nil {
		args = append(args, "-ldflags="+s.ldflags(version))
	}
	argv := append([]string{goCmd}, append(args, s.pkg)...)
	if nice, err := exec.LookPath("nice"); err == nil {
		argv = append([]string{nice, "-n", "19"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		msg := strings.TrimSpace(string(out))
		for _, sub := range networkErrors {
			if strings.Contains(msg, sub) {
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

// sourceDir is charts/test/<module>, found from this file's path.
func sourceDir(module string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("locate %s sources: no caller information", module)
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", module)
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("locate %s sources: %w", module, err)
	}
	return dir, nil
}

// buildKey returns the version of module that the main module in src
// requires and a short hash of its go.mod, go.sum, the package's main.go
// and the Go version.
func buildKey(src, pkg, module string) (version, key string, err error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", filepath.Join(pkg, "main.go")} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", "", fmt.Errorf("build key: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(name), len(b))
		h.Write(b)
		if name == "go.mod" {
			version = requiredVersion(string(b), module)
		}
	}
	if version == "" {
		return "", "", fmt.Errorf("build key: %s/go.mod requires no %s", src, module)
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
