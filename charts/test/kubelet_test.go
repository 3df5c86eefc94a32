package charttest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/warren-mq/warren/internal/warrentest"
)

// TestKubeletContract runs the warren binary, built as the Dockerfile
// builds it, exactly as the rendered Deployment tells the kubelet to: its
// command and args, its environment with the Secret the chart rendered, its
// mounted files, its user, a read-only working directory. Against the local
// broker it checks the probes at the rendered port and paths within the
// rendered allowances, that a published message is handled, and that
// SIGTERM ends it with exit 0 well within terminationGracePeriodSeconds.
func TestKubeletContract(t *testing.T) {
	amqpURL := testBroker(t)
	bin := warrenBinary(t)
	img := builtImage(t)

	tests := []struct {
		name     string
		scenario scenario
		sets     []string // beyond queue.name, broker.url and health.port
		publish  []string // flags of warren publish
		http     bool     // a sidecar on localhost takes the messages
		inflight bool     // SIGTERM while the handler runs: the drain finishes it
	}{
		{name: "two-values", scenario: scenario{name: "two-values"}},
		{
			name:     "exec",
			scenario: ciScenario("exec"),
			// The image's python3 script is the user's; the shell is enough
			// to see warren run the command and ack on exit 0.
			// THUMBNAIL_SIZE comes from extraEnv through handler.execEnv.
			sets: []string{`handler.execCommand=test -n "$WARREN_MESSAGE_ID" && test "$THUMBNAIL_SIZE" = 256 && cat >/dev/null`},
		},
		{
			name:     "exec-sigterm-in-flight",
			scenario: ciScenario("exec"),
			sets:     []string{"handler.execCommand=cat >/dev/null && sleep 3", "shutdownTimeout=25s"},
			inflight: true,
		},
		{name: "http-sidecar", scenario: ciScenario("http-sidecar"), http: true},
		{name: "quorum-retry", scenario: ciScenario("quorum-retry"), publish: []string{"-routing-key", "payment.created"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			queue := fmt.Sprintf("warren-charttest-%s-%d", tt.name, time.Now().UnixNano())
			sets := []string{
				"queue.name=" + queue,
				"broker.url=" + amqpURL,
				fmt.Sprintf("health.port=%d", warrentest.FreePort(t)),
			}
			var exchange string
			if strings.Contains(tt.scenario.name, "quorum") {
				exchange = queue + ".events"
				sets = append(sets, "queue.exchange="+exchange)
			}
			var sidecar *httpSidecar
			if tt.http {
				sidecar = newHTTPSidecar(t)
				sets = append(sets, "handler.httpUrl="+sidecar.url+"/messages")
			}
			sets = append(sets, tt.sets...)
			r := mustRender(t, tt.scenario, sets...)
			d := all[*appsv1.Deployment](r)[0]
			t.Cleanup(func() { deleteTopology(t, amqpURL, queue, exchange, d) })

			p := startPod(t, r, img, bin)
			c := warrenContainer(t, d)
			port := healthPort(t, c)

			// Startup, then liveness and readiness, as the kubelet runs them.
			// Readiness has the startup allowance: a slow broker delays it
			// without restarting anything.
			p.probe(t, "startup", c.StartupProbe, port, time.Time{})
			p.probe(t, "liveness", c.LivenessProbe, port, time.Time{})
			p.probe(t, "readiness", c.ReadinessProbe, port, p.started.Add(allowance(c.StartupProbe)+allowance(c.ReadinessProbe)))

			body := "hello from " + tt.name
			pub := exec.Command(bin, append(append([]string{"publish"}, tt.publish...), body)...)
			pub.Env = p.env
			if out, err := pub.CombinedOutput(); err != nil {
				t.Fatalf("warren publish: %v\n%s", err, out)
			}
			if tt.inflight {
				p.waitMetric(t, "warren_inflight_messages", 1, 30*time.Second)
			} else {
				p.waitMetric(t, `warren_messages_total{outcome="ack"}`, 1, 30*time.Second)
			}
			if sidecar != nil {
				if got := sidecar.bodies(); !slices.Contains(got, body) {
					t.Errorf("sidecar got %q, want %q", got, body)
				}
			}

			grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
			elapsed, code := p.terminate(t, grace)
			t.Logf("SIGTERM: exit %d after %v (terminationGracePeriodSeconds %v)", code, elapsed.Round(time.Millisecond), grace)
			if code != 0 {
				t.Errorf("exit code after SIGTERM = %d, want 0\n%s", code, p.logs.String())
			}
			if elapsed > grace/2 {
				t.Errorf("SIGTERM took %v, want well within terminationGracePeriodSeconds (%v)", elapsed, grace)
			}
			if tt.inflight {
				// The handler finished within the shutdown timeout: acked,
				// not handed back.
				if n := queueLength(t, amqpURL, queue); n != 0 {
					t.Errorf("queue holds %d messages after the drain, want 0 (acked)", n)
				}
				if !strings.Contains(p.logs.String(), `"drained"`) {
					t.Errorf("no drained line in warren's log")
				}
			}
			p.checkNothingWritten(t)
			checkLogs(t, p.logs.String(), amqpURL)
		})
	}
}

func ciScenario(name string) scenario {
	return scenario{name: name, file: filepath.Join(chartDir, "ci", name+"-values.yaml")}
}

// testBroker returns the broker URL of the tests (WARREN_TEST_AMQP_URL, or
// the local one) once it answers; without one the test is skipped, or fails
// in CI.
func testBroker(t *testing.T) string {
	t.Helper()
	u := os.Getenv("WARREN_TEST_AMQP_URL")
	if u == "" {
		u = "amqp://guest:guest@localhost:5672/"
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no broker at WARREN_TEST_AMQP_URL: %v", err)
		}
		t.Skipf("skipped, no broker at WARREN_TEST_AMQP_URL (make test brings one up): %v", err)
	}
	conn.Close()
	return u
}

// pod is warren started the way the kubelet starts the container.
type pod struct {
	cmd     *exec.Cmd
	started time.Time
	env     []string
	root    string // stands for the container's filesystem: mounts live under it
	tmp     string // the emptyDir mounted at /tmp, if any
	logs    *syncBuffer
	done    chan struct{}
	waitErr error
}

// imagePath is the PATH of the distroless image.
const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func startPod(t *testing.T, r *rendered, img image, bin string) *pod {
	t.Helper()
	d := all[*appsv1.Deployment](r)[0]
	spec := d.Spec.Template.Spec
	c := warrenContainer(t, d)

	// Command and args: the container's, else the image's, as Kubernetes
	// combines them.
	argv := c.Command
	args := c.Args
	if len(argv) == 0 {
		argv = img.entrypoint
		if len(args) == 0 {
			args = img.cmd
		}
	}
	if len(argv) == 0 || argv[0] != img.binary {
		t.Fatalf("the container runs %v; the image has warren at %s", argv, img.binary)
	}
	argv = append(append([]string{bin}, argv[1:]...), args...)

	root, err := os.MkdirTemp("", "warren-pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &pod{root: root, logs: &syncBuffer{}, done: make(chan struct{})}

	uid, gid, fsGroup := identity(spec.SecurityContext, c.SecurityContext)
	if uid == 0 {
		t.Fatalf("the container would run as root; runAsNonRoot makes the kubelet refuse it")
	}
	secrets := map[string]*corev1.Secret{}
	for _, s := range all[*corev1.Secret](r) {
		secrets[s.Name] = s
	}

	// Volumes: Secret files with their mode and fsGroup, emptyDirs.
	mounts := map[string]string{} // mount path in the container -> host path
	for _, m := range c.VolumeMounts {
		v := volume(d, m.Name)
		host := filepath.Join(root, "fs", m.MountPath)
		switch {
		case v.Secret != nil:
			sec := secrets[v.Secret.SecretName]
			if sec == nil {
				t.Fatalf("volume %s: Secret %s is not rendered", v.Name, v.Secret.SecretName)
			}
			writeSecretVolume(t, host, sec, v.Secret, fsGroup)
		case v.EmptyDir != nil:
			mkdirAll(t, host, 0o777)
			if m.MountPath == "/tmp" {
				p.tmp = host
			}
		default:
			t.Fatalf("volume %s: only Secret and emptyDir volumes are emulated", v.Name)
		}
		mounts[m.MountPath] = host
	}

	// Environment: values, Secret keys and the pod's name; paths into the
	// mounts point at their host copies.
	podName := d.Name + "-5d9f8c7b6d-x7k2p"
	if len(c.EnvFrom) > 0 {
		t.Fatalf("envFrom is not emulated")
	}
	env := []string{"PATH=" + imagePath, "HOSTNAME=" + podName}
	for _, e := range c.Env {
		val := e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			sec := secrets[ref.Name]
			if sec == nil {
				t.Fatalf("env %s: Secret %s is not rendered", e.Name, ref.Name)
			}
			val = string(sec.Data[ref.Key])
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			val = podName
		default:
			t.Fatalf("env %s: valueFrom %+v is not emulated", e.Name, e.ValueFrom)
		}
		if strings.Contains(val, "$(") {
			t.Fatalf("env %s: $(VAR) references are not emulated", e.Name)
		}
		val = hostPath(mounts, val)
		env = append(env, e.Name+"="+val)
	}
	if p.tmp != "" {
		// Whatever warren or its commands write to /tmp lands in the
		// emptyDir, which checkNothingWritten looks at.
		env = append(env, "TMPDIR="+p.tmp)
	}
	p.env = env

	// The root filesystem is read-only: so is the working directory.
	wd := filepath.Join(root, "workdir")
	mkdirAll(t, wd, 0o555)

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = wd
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Geteuid() == 0 {
		// As root the directory modes mean nothing: run as the container's
		// user, as the kubelet would.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(fsGroup)}}
	} else {
		t.Logf("not root: running warren as uid %d instead of %d", os.Geteuid(), uid)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	p.cmd = cmd
	p.started = time.Now()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("warren's log:\n%s", p.logs.String())
		}
	})
	return p
}

// hostPath maps a path in the container to its host copy, through the
// deepest mount that holds it; other values stay as they are.
func hostPath(mounts map[string]string, val string) string {
	best := ""
	for in := range mounts {
		if (val == in || strings.HasPrefix(val, in+"/")) && len(in) > len(best) {
			best = in
		}
	}
	if best == "" {
		return val
	}
	return mounts[best] + strings.TrimPrefix(val, best)
}

// identity is the user, group and fsGroup the container runs with: the
// container's securityContext wins over the pod's.
func identity(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) (uid, gid, fsGroup int64) {
	if psc != nil {
		if psc.RunAsUser != nil {
			uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			gid = *psc.RunAsGroup
		}
		if psc.FSGroup != nil {
			fsGroup = *psc.FSGroup
		}
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	return uid, gid, fsGroup
}

// writeSecretVolume writes a Secret's keys as the kubelet does: the items
// listed (or every key), with their mode, owned by the fsGroup.
func writeSecretVolume(t *testing.T, dir string, sec *corev1.Secret, src *corev1.SecretVolumeSource, fsGroup int64) {
	t.Helper()
	mkdirAll(t, dir, 0o755)
	items := src.Items
	if len(items) == 0 {
		for k := range sec.Data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		data, ok := sec.Data[it.Key]
		if !ok {
			t.Fatalf("Secret %s has no key %s", sec.Name, it.Key)
		}
		mode := os.FileMode(0o644)
		if src.DefaultMode != nil {
			mode = os.FileMode(*src.DefaultMode)
		}
		if it.Mode != nil {
			mode = os.FileMode(*it.Mode)
		}
		path := filepath.Join(dir, it.Path)
		if err := os.WriteFile(path, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		if os.Geteuid() == 0 && fsGroup != 0 {
			if err := os.Chown(path, 0, int(fsGroup)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func mkdirAll(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

// allowance is how long a probe may fail before the kubelet acts:
// initialDelaySeconds plus failureThreshold periods.
func allowance(pr *corev1.Probe) time.Duration {
	if pr == nil {
		return 0
	}
	return time.Duration(pr.InitialDelaySeconds)*time.Second +
		time.Duration(orDefault(pr.FailureThreshold, 3))*time.Duration(orDefault(pr.PeriodSeconds, 10))*time.Second
}

// probe runs an HTTP probe as the kubelet does: after initialDelaySeconds,
// one attempt every periodSeconds, each bounded by timeoutSeconds, passing
// at successThreshold successes in a row. Without a deadline (startup,
// liveness) it fails the test when failureThreshold attempts in a row fail,
// when the kubelet would kill the container; with one (readiness, which
// never kills) when the deadline passes first.
func (p *pod) probe(t *testing.T, name string, pr *corev1.Probe, port int, deadline time.Time) {
	t.Helper()
	if pr == nil || pr.HTTPGet == nil {
		t.Fatalf("%s probe: none rendered", name)
	}
	period := time.Duration(orDefault(pr.PeriodSeconds, 10)) * time.Second
	timeout := time.Duration(orDefault(pr.TimeoutSeconds, 1)) * time.Second
	failureThreshold := orDefault(pr.FailureThreshold, 3)
	successThreshold := orDefault(pr.SuccessThreshold, 1)
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, pr.HTTPGet.Path)
	client := &http.Client{Timeout: timeout}
	time.Sleep(time.Duration(pr.InitialDelaySeconds) * time.Second)

	var failures, successes int32
	var lastErr error
	for attempt := time.Now(); ; attempt = attempt.Add(period) {
		time.Sleep(time.Until(attempt))
		if err := p.exited(); err != nil {
			t.Fatalf("%s probe: %v", name, err)
		}
		lastErr = get(client, url)
		if lastErr == nil {
			failures = 0
			if successes++; successes >= successThreshold {
				return
			}
			continue
		}
		successes = 0
		failures++
		if deadline.IsZero() && failures >= failureThreshold {
			t.Fatalf("%s probe GET %s failed %d times, %v apart: the kubelet would kill the container; last: %v", name, url, failures, period, lastErr)
		}
		if !deadline.IsZero() && attempt.Add(period).After(deadline) {
			t.Fatalf("%s probe GET %s still failing after %v, the rendered allowance; last: %v", name, url, time.Since(p.started).Round(time.Second), lastErr)
		}
	}
}

func orDefault(v, def int32) int32 {
	if v == 0 {
		return def
	}
	return v
}

// get is one probe attempt: the kubelet counts 200 to 399 as success.
func get(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

func (p *pod) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("warren exited: %v\n%s", p.waitErr, p.logs.String())
	default:
		return nil
	}
}

// waitMetric waits until the sample named (with its labels) on /metrics
// reaches at least want.
func (p *pod) waitMetric(t *testing.T, sample string, want float64, timeout time.Duration) {
	t.Helper()
	addr := ""
	for _, kv := range p.env {
		if v, ok := strings.CutPrefix(kv, "WARREN_HEALTH_ADDR="); ok {
			addr = v
		}
	}
	url := "http://127.0.0.1" + addr + "/metrics"
	deadline := time.Now().Add(timeout)
	var got float64
	for time.Now().Before(deadline) {
		if err := p.exited(); err != nil {
			t.Fatal(err)
		}
		got = metric(url, sample)
		if got >= want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s = %v after %v, want %v", sample, got, timeout, want)
}

func metric(url, sample string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// terminate sends SIGTERM, as the kubelet does, and waits up to grace.
func (p *pod) terminate(t *testing.T, grace time.Duration) (time.Duration, int) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		t.Fatalf("warren still running %v after SIGTERM: the kubelet would SIGKILL it", grace)
	}
	elapsed := time.Since(start)
	var exitErr *exec.ExitError
	if errors.As(p.waitErr, &exitErr) {
		return elapsed, exitErr.ExitCode()
	}
	if p.waitErr != nil {
		t.Fatal(p.waitErr)
	}
	return elapsed, 0
}

// checkNothingWritten checks that the writable emptyDir stayed empty: warren
// needs no disk.
func (p *pod) checkNothingWritten(t *testing.T) {
	t.Helper()
	if p.tmp == "" {
		return
	}
	entries, err := os.ReadDir(p.tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("warren wrote %s to /tmp", e.Name())
	}
}

// checkLogs checks that warren knew every variable the chart set, and that
// the broker's password never shows.
func checkLogs(t *testing.T, logs, amqpURL string) {
	t.Helper()
	for _, m := range regexp.MustCompile(`unknown variable ignored.*?"variable":\s*"([A-Z_]+)"`).FindAllStringSubmatch(logs, -1) {
		t.Errorf("warren ignored %s, which the chart set", m[1])
	}
	if u, err := parseURL(amqpURL); err == nil && u != "" && strings.Contains(logs, ":"+u+"@") {
		t.Errorf("the broker password appears in warren's log")
	}
}

// parseURL returns the password of an AMQP URL.
func parseURL(s string) (string, error) {
	u, err := amqp.ParseURI(s)
	if err != nil {
		return "", err
	}
	return u.Password, nil
}

// queueLength is the number of ready messages in a queue.
func queueLength(t *testing.T, amqpURL, queue string) int {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue,
		true,  // durable
		false, // autoDelete
		false, // exclusive
		false, // noWait
		nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// deleteTopology deletes what warren declared for a test: the queue, its
// dead-letter and retry queues, the exchange.
func deleteTopology(t *testing.T, amqpURL, queue, exchange string, d *appsv1.Deployment) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Logf("clean up %s: %v", queue, err)
		return
	}
	defer conn.Close()
	names := []string{queue, queue + ".dead"}
	if delays := envMap(warrenContainer(t, d))["WARREN_RETRY_DELAYS"].Value; delays != "" {
		for _, delay := range strings.Split(delays, ",") {
			names = append(names, queue+".retry."+delay)
		}
	}
	for _, name := range names {
		ch, err := conn.Channel()
		if err != nil {
			t.Logf("clean up %s: %v", name, err)
			return
		}
		_, _ = ch.QueueDelete(name, false, false, false)
		ch.Close()
	}
	if exchange != "" {
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(exchange, false, false)
			ch.Close()
		}
	}
}

// httpSidecar stands for the application container: it takes the POSTs of
// the http handler on localhost.
type httpSidecar struct {
	url string
	mu  sync.Mutex
	got []string
}

func newHTTPSidecar(t *testing.T) *httpSidecar {
	s := &httpSidecar{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, string(b))
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *httpSidecar) bodies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
