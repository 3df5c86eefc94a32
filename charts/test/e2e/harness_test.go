// Package e2e runs the chart end to end: helm install into a control plane
// of its own (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler), a test kubelet that runs the pods as processes in
// network namespaces of their own, the real warren binary and the
// machine's RabbitMQ, under a steady publish load whose every message is
// counted. README.md says how it works and what it leaves out.
package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/warren-mq/warren/charts/test/internal/cluster"
	"github.com/warren-mq/warren/charts/test/internal/kubelet"
	"github.com/warren-mq/warren/internal/brokertest"
)

const (
	repoRoot = "../../.."
	chartDir = "../../warren"
	release  = "warren"
	// The images of the http-sidecar scenario, and where the test kubelet
	// puts their binaries.
	warrenImage  = "ghcr.io/warren-mq/warren"
	warrenPath   = "/usr/local/bin/warren" // the Dockerfile's ENTRYPOINT
	sidecarImage = "ghcr.io/example/orders-app"
	sidecarPath  = "/app/sidecar"
)

// TestMain makes the test binary a container's process when the test
// kubelet starts it as one.
func TestMain(m *testing.M) {
	if kubelet.ContainerInit() {
		return
	}
	os.Exit(m.Run())
}

// env is one run of the suite: the control plane, the kubelet, the broker
// and the load, and the release under test.
type env struct {
	cs         kubernetes.Interface
	dyn        dynamic.Interface
	kubeconfig string
	kubelet    *kubelet.Kubelet
	broker     *broker
	podURL     string // the broker as the pods reach it
	localURL   string // the broker as the test reaches it
	queue      string
	ns         string
	ledger     *ledger
	collector  *collector
	pub        *publisher
	sets       []string // the values of every install and upgrade
	logDir     string
	report     []row
}

// row is one scenario's line in the report.
type row struct {
	name                  string
	took                  time.Duration
	messages, duplicates  int
	lost, restarts, redel int
}

// config changes what setup brings up.
type config struct {
	// cluster adds to the control plane (KEDA).
	cluster []cluster.Option
	// node is a RabbitMQ node of the test's own to use instead of the
	// machine's broker: one the test may stop.
	node *brokertest.Node
}

// setup brings everything up, and takes it down again in t.Cleanup, in
// reverse order, failed or not.
func setup(t *testing.T, cfg config) *env {
	t.Helper()
	skipUnlessE2E(t)
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end suite needs root: network namespaces, mounts, other users")
	}
	for _, cmd := range []string{"ip", "rabbitmqctl"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Fatalf("%s not found: %v", cmd, err)
		}
	}
	bins := t.TempDir()
	// Readable by the pods' user through the bind mounts.
	if err := os.Chmod(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	warren := goBuild(t, bins, repoRoot, "./cmd/warren", "warren")
	sidecar := goBuild(t, bins, ".", "./sidecar", "sidecar")

	c := cluster.StartControlPlane(t, cfg.cluster...)
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}

	// A /16 of its own, picked at random from 10.200-10.249.
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	prefix := netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/16", 200+int(b[0])%50))
	network, err := kubelet.NewNetwork(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := network.Close(); err != nil {
			t.Errorf("pod network: %v", err)
		}
	})
	gw := network.Gateway().String()

	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cs: cs, dyn: dyn, kubeconfig: c.Kubeconfig, ledger: newLedger(), ns: "e2e"}
	if cfg.node != nil {
		e.broker = newBrokerWith(t, cfg.node.Addr(), cfg.node.Ctl, cfg.node.Ctl)
		e.broker.own = true
	} else {
		e.broker = newBroker(t, "127.0.0.1:5672")
	}
	fwd := forward(t, net.JoinHostPort(gw, "0"), e.broker.local)
	e.podURL = e.broker.url(fwd.addr())
	e.localURL = e.broker.url(e.broker.local)
	col := startCollector(t, net.JoinHostPort(gw, "0"), e.ledger)
	e.collector = col

	e.logDir = t.TempDir()
	logFile, err := os.Create(filepath.Join(e.logDir, "kubelet.log"))
	if err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(logFile, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
	}
	kl := kubelet.New(kubelet.Config{
		Client:   cs,
		NodeName: "e2e-node",
		Network:  network,
		Dir:      e.logDir,
		Logf:     logf,
		Images: map[string]kubelet.Image{
			warrenImage: {Binary: warren, Entrypoint: []string{warrenPath}},
			sidecarImage: {Binary: sidecar, Entrypoint: []string{sidecarPath}, Env: []string{
				"COLLECTOR_URL=" + col.url,
				"LISTEN_ADDR=:8000",
			}},
		},
	})
	e.kubelet = kl
	ctx, stop := context.WithCancel(context.Background())
	if err := kl.Register(ctx); err != nil {
		stop()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- kl.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("kubelet: %v", err)
		}
		logFile.Close()
		if t.Failed() {
			e.dumpLogs(t)
		}
	})

	waitFor(t, time.Minute, "the node to be ready and untainted", func() (bool, string) {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), "e2e-node", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return len(n.Spec.Taints) == 0, fmt.Sprintf("taints %v", n.Spec.Taints)
	})
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	e.queue = "warren-e2e-" + randomHex(4)
	e.pub = &publisher{url: e.localURL, queue: e.queue, rate: 25 * time.Millisecond, ledger: e.ledger, logf: logf}
	e.sets = []string{
		"queue.name=" + e.queue,
		"broker.url=" + e.podURL,
		"replicaCount=3",
		"podDisruptionBudget.enabled=true",
		// A rolling update never has fewer ready pods than replicas.
		"strategy.rollingUpdate.maxUnavailable=0",
		"strategy.rollingUpdate.maxSurge=1",
		// A hung process is found in 6 s and killed 5 s later, so the
		// suite fits in CI; the chart's defaults take 30 s and the pod's
		// grace.
		"livenessProbe.periodSeconds=2",
		"livenessProbe.failureThreshold=3",
		"livenessProbe.timeoutSeconds=1",
		"livenessProbe.terminationGracePeriodSeconds=5",
		"readinessProbe.periodSeconds=2",
	}
	return e
}

// skipUnlessE2E skips the test unless the end-to-end suite was asked
// for: before a test starts a broker node of its own.
func skipUnlessE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("WARREN_E2E") != "1" {
		t.Skip("the end-to-end suite runs with WARREN_E2E=1 (make e2e): it needs root, ip(8), rabbitmqctl and a few minutes")
	}
}

// goBuild builds a static binary of pkg (relative to dir) into out.
func goBuild(t *testing.T, out, dir, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(out, name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return bin
}

// dumpLogs prints the ends of the kubelet's and the containers' logs.
func (e *env) dumpLogs(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(e.logDir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(e.logDir, "logs", "*.log"))
	for _, f := range append(files, more...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		t.Logf("--- %s (end):\n%s", filepath.Base(f), b)
	}
}

// helm returns a Helm configuration for the test's namespace.
func (e *env) helm(t *testing.T) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &e.kubeconfig
	flags.Namespace = &e.ns
	cache := t.TempDir()
	flags.CacheDir = &cache
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, e.ns, "secret", func(string, ...any) {}); err != nil {
		t.Fatalf("helm configuration: %v", err)
	}
	return cfg
}

// values are the http-sidecar scenario's values under the suite's sets
// and then more.
func (e *env) values(t *testing.T, more ...string) map[string]any {
	t.Helper()
	opts := &values.Options{
		ValueFiles: []string{filepath.Join(chartDir, "ci", "http-sidecar-values.yaml")},
		Values:     append(append([]string{}, e.sets...), more...),
	}
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	return vals
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

func (e *env) install(t *testing.T) {
	t.Helper()
	in := action.NewInstall(e.helm(t))
	in.Namespace = e.ns
	in.ReleaseName = release
	in.Timeout = time.Minute
	if _, err := in.RunWithContext(context.Background(), loadChart(t), e.values(t)); err != nil {
		t.Fatalf("helm install: %v", err)
	}
}

// upgrade runs helm upgrade with more values; they stay for later upgrades.
func (e *env) upgrade(t *testing.T, more ...string) {
	t.Helper()
	e.sets = append(e.sets, more...)
	up := action.NewUpgrade(e.helm(t))
	up.Namespace = e.ns
	up.Timeout = time.Minute
	if _, err := up.RunWithContext(context.Background(), release, loadChart(t), e.values(t)); err != nil {
		t.Fatalf("helm upgrade %v: %v", more, err)
	}
}

// pods returns the release's pods, the terminating ones too.
func (e *env) pods(t *testing.T) []corev1.Pod {
	t.Helper()
	l, err := e.cs.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		t.Fatalf("list pods: %v", err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// readyPods counts the pods that are ready and not being deleted.
func readyPods(pods []corev1.Pod) int {
	n := 0
	for i := range pods {
		if pods[i].DeletionTimestamp == nil && isReady(&pods[i]) {
			n++
		}
	}
	return n
}

// waitRollout waits until the Deployment has rolled out with n replicas,
// every pod ready and no other pod left (the old ones deleted and gone),
// calling each with the pods at every poll.
func (e *env) waitRollout(t *testing.T, n int, timeout time.Duration, each func([]corev1.Pod)) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(t, timeout, fmt.Sprintf("a rollout of %d ready pods", n), func() (bool, string) {
		d, err := e.cs.AppsV1().Deployments(e.ns).Get(context.Background(), release, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pods = e.pods(t)
		if each != nil {
			each(pods)
		}
		st := d.Status
		done := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == int32(n) &&
			st.ReadyReplicas == int32(n) && st.Replicas == int32(n) && len(pods) == n && readyPods(pods) == n
		return done, fmt.Sprintf("deployment %s; %d pods, %d ready", deploymentSummary(d), len(pods), readyPods(pods))
	})
	return pods
}

func deploymentSummary(d *appsv1.Deployment) string {
	st := d.Status
	return fmt.Sprintf("generation %d/%d replicas %d updated %d ready %d available %d",
		st.ObservedGeneration, d.Generation, st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas)
}

// waitFor polls cond until it holds, failing the test after timeout with
// the last state cond described.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", timeout, what, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// restartCount sums the pods' container restarts.
func restartCount(pods []corev1.Pod) int {
	n := 0
	for _, p := range pods {
		for _, c := range p.Status.ContainerStatuses {
			n += int(c.RestartCount)
		}
	}
	return n
}

// podNames are the names of pods.
func podNames(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

// checkExits checks that every container of the named pods ended with exit
// 0 within its grace period, after a SIGTERM for the pod's deletion.
func (e *env) checkExits(t *testing.T, names []string) {
	t.Helper()
	byPod := map[string][]kubelet.Termination{}
	for _, end := range e.kubelet.Terminations() {
		byPod[end.Pod] = append(byPod[end.Pod], end)
	}
	for _, name := range names {
		var deleted []kubelet.Termination
		for _, end := range byPod[e.ns+"/"+name] {
			if end.Cause == "deleted" {
				deleted = append(deleted, end)
			}
		}
		if len(deleted) != 2 {
			t.Errorf("pod %s: %d containers ended on deletion, want 2 (warren and app): %+v", name, len(deleted), byPod[e.ns+"/"+name])
			continue
		}
		for _, end := range deleted {
			took := end.Exited.Sub(end.Signalled)
			if end.ExitCode != 0 || end.Killed || took > end.Grace {
				t.Errorf("pod %s container %s: exit %d after %v (grace %v, SIGKILL %v), want exit 0 within the grace",
					name, end.Container, end.ExitCode, took.Round(time.Millisecond), end.Grace, end.Killed)
			}
		}
	}
}

// String is the report: a line a scenario.
func (e *env) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-22s %9s %9s %6s %11s %9s %12s\n", "scenario", "took", "messages", "lost", "duplicates", "restarts", "redelivered")
	for _, r := range e.report {
		fmt.Fprintf(&b, "%-22s %9s %9d %6d %11d %9d %12d\n", r.name, r.took.Round(100*time.Millisecond), r.messages, r.lost, r.duplicates, r.restarts, r.redel)
	}
	return b.String()
}
