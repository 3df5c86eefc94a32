// Package cluster runs a Kubernetes control plane on loopback for tests: etcd
// from the system's etcd-server package and a kube-apiserver built from the
// k8s.io/kubernetes module in ../../kube-apiserver. Start runs those two
// alone: objects are stored and validated by the real API server, and
// nothing runs them. StartControlPlane adds kube-controller-manager and
// kube-scheduler (../../kube-controller-manager, ../../kube-scheduler), so
// Deployments, ReplicaSets, endpoints and disruption budgets work and pods
// are bound to nodes; a kubelet is the caller's.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warren-mq/warren/internal/warrentest"
)

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Kubeconfig is the path of a kubeconfig file that authenticates as a
	// member of system:masters.
	Kubeconfig string
	// Config is the same as a client-go configuration.
	Config *rest.Config

	dir     string // the test's directory: logs, keys, certificates
	keyFile string // the service-account signing key
}

// Start starts etcd and kube-apiserver, each on free loopback ports, and
// stops them when the test ends, failed or not. It skips the test when etcd
// is not installed or the API server cannot be built (no module proxy and no
// cached binary), unless requireCluster says that must not happen (in CI).
func Start(t testing.TB) *Cluster {
	t.Helper()
	return start(t, false)
}

// start is Start, with the API aggregation layer configured if aggregation
// is set.
func start(t testing.TB, aggregation bool) *Cluster {
	t.Helper()
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		skipOrFail(t, "etcd not found (Debian: apt-get install etcd-server): %v", err)
	}
	apiserver := binary(t, KubeAPIServer)
	dir := t.TempDir()
	var flags []string
	if aggregation {
		flags = newPKI(t, filepath.Join(dir, "pki")).aggregationFlags(t)
	}
	etcdURL := startEtcd(t, etcd, dir)
	return startAPIServer(t, apiserver, dir, etcdURL, flags...)
}

// Option adds to what StartControlPlane runs.
type Option func(*options)

type options struct {
	keda bool
}

// WithKEDA adds KEDA: its CRDs, its operator and metrics adapter (built
// like the control plane, see Binary) serving external.metrics.k8s.io
// through the API server's aggregation layer, and the controller manager's
// HPA controller syncing every 5 s (15 s by default) so scaling shows in
// seconds. The API server then has a client CA and front-proxy flags,
// which the suite without KEDA does without.
func WithKEDA() Option { return func(o *options) { o.keda = true } }

// StartControlPlane is Start, then kube-controller-manager and
// kube-scheduler with the same credentials, then what the options add. It
// returns once the controller manager has published the root CA into the
// default namespace (its controllers run) and the scheduler's process is
// up; the scheduler serves no port, so the first pod it binds is the proof
// that it works.
func StartControlPlane(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cm := binary(t, KubeControllerManager)
	sched := binary(t, KubeScheduler)
	var operator, adapter string
	if o.keda {
		operator = binary(t, KEDAOperator)
		adapter = binary(t, KEDAAdapter)
	}
	c := start(t, o.keda)

	flexDir := filepath.Join(c.dir, "flexvolume")
	if err := os.Mkdir(flexDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmArgs := []string{cm,
		"--kubeconfig=" + c.Kubeconfig,
		"--service-account-private-key-file=" + c.keyFile,
		"--root-ca-file=" + filepath.Join(c.dir, "certs", "apiserver.crt"),
		// Every controller acts with the masters token of the kubeconfig:
		// no per-controller service accounts to mint tokens for.
		"--use-service-account-credentials=false",
		"--leader-elect=false",
		// Otherwise it creates a directory under /usr/libexec.
		"--flex-volume-plugin-dir=" + flexDir,
		"--secure-port=0",
		"--controllers=*",
		"--v=1",
	}
	if o.keda {
		cmArgs = append(cmArgs, "--horizontal-pod-autoscaler-sync-period=5s")
	}
	p := run(t, c.dir, KubeControllerManager, nil, cmArgs...)
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	err = waitFor(p, time.Minute, func() error {
		_, err := cs.CoreV1().ConfigMaps("default").Get(context.Background(), "kube-root-ca.crt", metav1.GetOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c.dir, KubeScheduler, nil, sched,
		"--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1",
	)
	if o.keda {
		startKEDA(t, c, operator, adapter)
	}
	return c
}

// binary is Binary, skipping the test (failing it in CI) when the component
// cannot be built here.
func binary(t testing.TB, component string) string {
	t.Helper()
	bin, err := Binary(t, component)
	if errors.Is(err, errBuildImpossible) {
		skipOrFail(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// requireCluster reports whether a missing etcd or API server fails the test
// instead of skipping it: in CI (CI=true) or with WARREN_TEST_REQUIRE_CLUSTER=1.
func requireCluster() bool {
	return os.Getenv("CI") == "true" || os.Getenv("WARREN_TEST_REQUIRE_CLUSTER") == "1"
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if requireCluster() {
		t.Fatalf("control plane unavailable: "+format, args...)
	}
	t.Skipf("skipped, no control plane: "+format+" (CI=true makes this a failure)", args...)
}

// process is a started command whose exit is awaited by one goroutine.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// run runs a command, with env added to the test's environment, with its
// output in dir/name.log, and stops it in t.Cleanup: SIGTERM, then SIGKILL
// after 10 s.
func run(t testing.TB, dir, name string, env []string, argv ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create %s: %v", logPath, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own process group, so a Ctrl-C of `go test` reaches it only
	// through this cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s log (last 4 KiB):\n%s", name, tail(logPath, 4096))
		}
	})
	return p
}

// exited reports the process's end, if it has ended.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v; log:\n%s", p.name, p.err, tail(p.log, 4096))
	default:
		return nil
	}
}

func tail(path string, n int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// waitFor polls check until it returns nil, the process ends or the
// deadline passes.
func waitFor(p *process, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if perr := p.exited(); perr != nil {
			return perr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", p.name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func startEtcd(t testing.TB, etcd, dir string) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", warrentest.FreePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", warrentest.FreePort(t))
	p := run(t, dir, "etcd", nil, etcd,
		"--name=test",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=test="+peer,
		"--logger=zap",
		"--log-level=warn",
	)
	err := waitFor(p, 30*time.Second, func() error {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !bytes.Contains(body, []byte(`"health":"true"`)) {
			return fmt.Errorf("etcd /health: %s", body)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func startAPIServer(t testing.TB, apiserver, dir, etcdURL string, flags ...string) *Cluster {
	t.Helper()
	keyFile := filepath.Join(dir, "sa.key")
	writeRSAKey(t, keyFile)
	token := randomToken(t)
	tokenFile := filepath.Join(dir, "tokens.csv")
	// token,user,uid,"group1,group2"
	writeFile(t, tokenFile, fmt.Sprintf("%s,warren-test,warren-test,\"system:masters\"\n", token))

	port := warrentest.FreePort(t)
	args := []string{apiserver,
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + keyFile,
		"--service-account-signing-key-file=" + keyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		// The "kubernetes" Service's endpoints would point at 127.0.0.1,
		// which the endpoint reconciler refuses.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--v=1",
	}
	p := run(t, dir, "kube-apiserver", nil, append(args, flags...)...)
	host := fmt.Sprintf("https://127.0.0.1:%d", port)
	// The serving certificate is self-signed at start; the client skips
	// verification of a server on loopback that the test itself started.
	httpClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	err := waitFor(p, 2*time.Minute, func() error {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, host+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeFile(t, kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster:
      server: %s
      insecure-skip-tls-verify: true
users:
  - name: test
    user:
      token: %s
contexts:
  - name: test
    context:
      cluster: test
      user: test
      namespace: default
current-context: test
`, host, token))
	return &Cluster{
		dir:        dir,
		keyFile:    keyFile,
		Kubeconfig: kubeconfig,
		Config: &rest.Config{
			Host:            host,
			BearerToken:     token,
			TLSClientConfig: rest.TLSClientConfig{Insecure: true},
			QPS:             100,
			Burst:           200,
		},
	}
}

func writeRSAKey(t testing.TB, path string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generate service account key: %v", err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	writeFile(t, path, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})))
}

func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("token: %v", err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}
