package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// testVersion is what the test binary is built to report.
const testVersion = "v9.8.7-test"

// binary is the warren binary built once for these tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "warren-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = warrentest.Build(dir, ".", nil, "-race", "-ldflags", "-X main.version="+testVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a warren process started by a test.
type proc struct {
	cmd    *exec.Cmd
	out    *warrentest.Buffer
	health string // base URL of its health server
	done   chan struct{}
	err    error
}

// baseEnv is the environment of every warren process in these tests: no
// WARREN_* from the test's own environment, and the race detector's report
// (the binary is built with -race) failing the process at once.
func baseEnv() []string { return warrentest.Env("atexit_sleep_ms=0 halt_on_error=1") }

// startWarren runs the binary with args and env (NAME=value) and stops it
// with SIGKILL when the test ends, if it still runs.
func startWarren(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startWarrenWithStdin(t, env, nil, args...)
}

// startWarrenWithStdin is startWarren with stdin, nil for none.
func startWarrenWithStdin(t *testing.T, env []string, stdin io.Reader, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(binary, args...)
	cmd.Stdin = stdin
	cmd.Env = append(baseEnv(), "WARREN_HEALTH_ADDR="+addr)
	cmd.Env = append(cmd.Env, env...)
	p := &proc{cmd: cmd, out: &warrentest.Buffer{}, health: "http://" + addr, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start warren: %v", err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("warren output:\n%s", p.out.String())
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code, or -1 if
// a signal killed it.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("warren did not exit within %s", timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal warren: %v", err)
	}
}

// status returns the status code and body of GET path on the health
// server, or 0 if it does not answer.
func (p *proc) status(path string) (int, string) {
	resp, err := http.Get(p.health + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *proc) waitStatus(t *testing.T, path string, want int) {
	t.Helper()
	brokertest.WaitFor(t, 20*time.Second, fmt.Sprintf("GET %s = %d", path, want), func() bool {
		code, _ := p.status(path)
		return code == want
	})
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := warrentest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// runWarren runs the binary to its end and returns its exit code and
// combined output.
func runWarren(t *testing.T, env []string, stdin string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(baseEnv(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run warren %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func brokerEnv(queue string) []string {
	return []string{"WARREN_AMQP_URL=" + brokertest.URL(), "WARREN_QUEUE=" + queue}
}

func TestVersion(t *testing.T) {
	code, out := runWarren(t, nil, "", "version")
	if code != 0 || strings.TrimSpace(out) != testVersion {
		t.Errorf("warren version = %d, %q; want 0, %q", code, out, testVersion)
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"help", "--help", "-h"} {
		t.Run(arg, func(t *testing.T) {
			code, out := runWarren(t, []string{"WARREN_AMQP_URL=amqp://u:HelpSecret1@h/"}, "", arg)
			if code != 0 {
				t.Errorf("warren %s exited %d, want 0", arg, code)
			}
			for _, want := range []string{"publish", "version", "WARREN_QUEUE", "WARREN_AMQP_URL_FILE", "WARREN_PREFETCH", "WARREN_MAX_INFLIGHT_BYTES", "WARREN_HANDLER_TIMEOUT", "WARREN_TLS_CA_FILE", "/readyz", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER"} {
				if !strings.Contains(out, want) {
					t.Errorf("warren %s does not mention %s", arg, want)
				}
			}
			if strings.Contains(out, "HelpSecret1") {
				t.Errorf("warren %s printed the broker password", arg)
			}
		})
	}
}

func TestUnknownCommandExits2(t *testing.T) {
	code, out := runWarren(t, nil, "", "frobnicate")
	if want := "warren: unknown command \"frobnicate\"; run \"warren help\"\n"; code != 2 || out != want {
		t.Errorf("warren frobnicate = %d, %q; want 2, %q", code, out, want)
	}
}

func TestBadConfigurationExits2BeforeConnecting(t *testing.T) {
	// A listener standing in for the broker tells whether warren dialled.
	addr, accepted := brokertest.Listen(t, func(net.Conn) {})
	url := "amqp://guest:ConfSecret9@" + addr + "/"
	for _, tt := range []struct {
		name string
		give []string
		want string
	}{
		{"missing queue", nil, `WARREN_QUEUE is not set: want the `}, // the queue to consume, or to publish to
		{"prefetch not a number", []string{"WARREN_QUEUE=q", "WARREN_PREFETCH=abc"}, `WARREN_PREFETCH="abc": want an integer from 1 to 65535`},
		{"prefetch too big", []string{"WARREN_QUEUE=q", "WARREN_PREFETCH=70000"}, `WARREN_PREFETCH="70000": want an integer from 1 to 65535`},
		{"concurrency above prefetch", []string{"WARREN_QUEUE=q", "WARREN_PREFETCH=2", "WARREN_CONCURRENCY=3"}, `WARREN_CONCURRENCY="3": want an integer from 1 to WARREN_PREFETCH (2)`},
		{"max inflight bytes in SI units", []string{"WARREN_QUEUE=q", "WARREN_MAX_INFLIGHT_BYTES=100MB"}, `WARREN_MAX_INFLIGHT_BYTES="100MB": want a size from 1Mi to 1024Gi`},
		{"unknown handler", []string{"WARREN_QUEUE=q", "WARREN_HANDLER=magic"}, `WARREN_HANDLER="magic": want one of log, noop, http, exec`},
		{"negative timeout", []string{"WARREN_QUEUE=q", "WARREN_HANDLER_TIMEOUT=-5s"}, `WARREN_HANDLER_TIMEOUT="-5s": want a positive duration`},
		{"negative shutdown", []string{"WARREN_QUEUE=q", "WARREN_SHUTDOWN_TIMEOUT=-1s"}, `WARREN_SHUTDOWN_TIMEOUT="-1s": want a positive duration`},
		{"zero shutdown", []string{"WARREN_QUEUE=q", "WARREN_SHUTDOWN_TIMEOUT=0s"}, `WARREN_SHUTDOWN_TIMEOUT="0s": want a positive duration`},
		{"health addr not an ip", []string{"WARREN_QUEUE=q", "WARREN_HEALTH_ADDR=256.1.1.1:80"}, `WARREN_HEALTH_ADDR="256.1.1.1:80": want a listen address`},
		{"health addr a name", []string{"WARREN_QUEUE=q", "WARREN_HEALTH_ADDR=example.invalid:8080"}, `WARREN_HEALTH_ADDR="example.invalid:8080": want a listen address`},
		{"health addr leading space", []string{"WARREN_QUEUE=q", "WARREN_HEALTH_ADDR= :8080"}, `WARREN_HEALTH_ADDR=" :8080": want a listen address`},
		{"url port out of range", []string{"WARREN_QUEUE=q", "WARREN_AMQP_URL=amqp://guest:ConfSecret9@localhost:99999/"}, `WARREN_AMQP_URL: the URL does not parse: port out of range 1-65535`},
		{"derived queue name too long", []string{"WARREN_QUEUE=" + strings.Repeat("q", 250), "WARREN_RETRY_DELAYS=10m"}, `(the longest, <queue>.retry.10m, would be 260 bytes)`},
		{"http dead status", []string{"WARREN_QUEUE=q", "WARREN_HTTP_DEAD_STATUSES=200"}, `WARREN_HTTP_DEAD_STATUSES="200": want HTTP statuses from 400 to 599`},
		{"bad duration", []string{"WARREN_QUEUE=q", "WARREN_SHUTDOWN_TIMEOUT=soon"}, `WARREN_SHUTDOWN_TIMEOUT="soon"`},
		{"url not amqp", []string{"WARREN_QUEUE=q", "WARREN_AMQP_URL=http://guest:ConfSecret9@localhost/"}, `WARREN_AMQP_URL: the URL does not parse: the scheme is not amqp:// or amqps://; want amqp:// or amqps://`},
		{"queue type", []string{"WARREN_QUEUE=q", "WARREN_QUEUE_TYPE=stream"}, `WARREN_QUEUE_TYPE="stream": want classic or quorum`},
		{"http without url", []string{"WARREN_QUEUE=q", "WARREN_HANDLER=http"}, `WARREN_HTTP_URL is not set`},
		{"exec without command", []string{"WARREN_QUEUE=q", "WARREN_HANDLER=exec"}, `WARREN_EXEC_COMMAND is not set`},
		{"declare not a bool", []string{"WARREN_QUEUE=q", "WARREN_DECLARE=maybe"}, `WARREN_DECLARE="maybe": want true or false`},
		{"log format", []string{"WARREN_QUEUE=q", "WARREN_LOG_FORMAT=xml"}, `WARREN_LOG_FORMAT="xml": want json or console`},
		{"rate limit negative", []string{"WARREN_QUEUE=q", "WARREN_RATE_LIMIT=-5"}, `WARREN_RATE_LIMIT="-5": want 0 (no limit), or messages per second up to 100000`},
		{"rate limit with a unit", []string{"WARREN_QUEUE=q", "WARREN_RATE_LIMIT=20/s"}, `WARREN_RATE_LIMIT="20/s": want 0 (no limit), or messages per second up to 100000`},
		{"url file missing", []string{"WARREN_QUEUE=q", "WARREN_AMQP_URL_FILE=/nonexistent/url"}, `WARREN_AMQP_URL_FILE="/nonexistent/url"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"WARREN_AMQP_URL=" + url}, tt.give...)
			for _, args := range [][]string{nil, {"publish", "x"}} {
				code, out := runWarren(t, env, "", args...)
				if code != 2 {
					t.Errorf("warren %v with %v exited %d, want 2; output: %s", args, tt.give, code, out)
				}
				if !strings.Contains(out, tt.want) {
					t.Errorf("warren %v with %v said %q, want it to contain %q", args, tt.give, out, tt.want)
				}
				if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
					t.Errorf("warren %v with %v said %d lines, want one: %q", args, tt.give, n+1, out)
				}
				if strings.Contains(out, "ConfSecret9") {
					t.Errorf("warren %v with %v printed the broker password: %q", args, tt.give, out)
				}
			}
		})
	}
	if n := len(accepted); n != 0 {
		t.Errorf("warren connected %d times with a bad configuration, want 0", n)
	}
}

func TestFirstSession(t *testing.T) {
	q := brokertest.Queue(t)
	name := brokertest.Name(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_CONNECTION_NAME="+name))
	p.waitStatus(t, "/readyz", http.StatusOK)
	if ok, _ := brokertest.CanCtl(); ok {
		if n := brokertest.Connections(t, name); n != 1 {
			t.Errorf("broker lists %d connections named %q, want 1", n, name)
		}
	}
	if code, out := runWarren(t, brokerEnv(q), "", "publish", "hello"); code != 0 {
		t.Fatalf("warren publish hello = %d: %s", code, out)
	}
	brokertest.WaitFor(t, 10*time.Second, "the log line of the message", func() bool {
		return strings.Contains(p.out.String(), `"body":"hello"`)
	})
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
	if n := brokertest.Ready(t, q); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

func TestSIGTERMFinishesInFlightAndExits0(t *testing.T) {
	q := brokertest.Queue(t)
	dir := t.TempDir()
	// Each message's command marks its start, works a while, marks its end.
	command := fmt.Sprintf(`touch %[1]s/"$WARREN_MESSAGE_ID".started; sleep 2; cat > %[1]s/"$WARREN_MESSAGE_ID".done`, dir)
	env := append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command,
		"WARREN_PREFETCH=4", "WARREN_CONCURRENCY=2", "WARREN_SHUTDOWN_TIMEOUT=20s")
	p := startWarren(t, env)
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, brokertest.Bodies("m", 10)...)
	brokertest.WaitFor(t, 10*time.Second, "2 commands running", func() bool {
		started, _ := filepath.Glob(filepath.Join(dir, "*.started"))
		return len(started) == 2
	})

	p.signal(t, syscall.SIGTERM)
	p.waitStatus(t, "/readyz", http.StatusServiceUnavailable)
	if code, body := p.status("/livez"); code != http.StatusOK {
		t.Errorf("GET /livez while draining = %d %q, want 200", code, body)
	}
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
	done, _ := filepath.Glob(filepath.Join(dir, "*.done"))
	started, _ := filepath.Glob(filepath.Join(dir, "*.started"))
	if len(done) != 2 || len(started) != 2 {
		t.Errorf("%d commands started and %d finished, want the 2 in flight to finish and no new one", len(started), len(done))
	}
	if n := brokertest.Ready(t, q); n != 8 {
		t.Errorf("queue holds %d messages, want 8: the 2 finished acked, the rest handed back", n)
	}
}

func TestSecondSignalStopsAtOnce(t *testing.T) {
	q := brokertest.Queue(t)
	env := append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=sleep 60",
		"WARREN_PREFETCH=4", "WARREN_CONCURRENCY=2", "WARREN_SHUTDOWN_TIMEOUT=60s")
	p := startWarren(t, env)
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, brokertest.Bodies("m", 5)...)
	brokertest.WaitFor(t, 10*time.Second, "messages in flight", func() bool {
		return strings.Count(p.out.String(), "consuming") == 1 && brokertest.Ready(t, q) < 5
	})
	p.signal(t, syscall.SIGTERM)
	p.waitStatus(t, "/readyz", http.StatusServiceUnavailable)
	p.signal(t, syscall.SIGTERM)
	p.wait(t, 5*time.Second)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Errorf("warren ended with %v after a second SIGTERM, want killed by the signal", p.cmd.ProcessState)
	}
	brokertest.WaitFor(t, 10*time.Second, "every message back in the queue", func() bool { return brokertest.Ready(t, q) == 5 })
}

func TestProbesFollowTheBroker(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	proxy.Refuse(true)
	p := startWarren(t, []string{"WARREN_AMQP_URL=" + proxy.URL(), "WARREN_QUEUE=" + q})
	p.waitStatus(t, "/livez", http.StatusOK)
	code, body := p.status("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "connecting") {
		t.Errorf("GET /readyz with the broker unreachable = %d %q, want 503 saying connecting", code, body)
	}
	proxy.Refuse(false)
	p.waitStatus(t, "/readyz", http.StatusOK)
	_, metrics := p.status("/metrics")
	for _, want := range []string{"warren_connected 1", "warren_consuming 1", `warren_build_info{version="` + testVersion + `"} 1`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	proxy.Refuse(true)
	proxy.Cut()
	p.waitStatus(t, "/readyz", http.StatusServiceUnavailable)
	if code, body := p.status("/livez"); code != http.StatusOK {
		t.Errorf("GET /livez with the broker gone = %d %q, want 200", code, body)
	}
	proxy.Refuse(false)
	p.waitStatus(t, "/readyz", http.StatusOK)
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
}

func TestPasswordNeverInOutput(t *testing.T) {
	const secret = "Pw-d0nt-l3ak"
	closed := freeAddr(t)
	q := brokertest.Queue(t)
	for _, tt := range []struct {
		name string
		url  string
	}{
		{"unreachable broker", "amqp://guest:" + secret + "@" + closed + "/"},
		{"wrong password", strings.Replace(brokertest.URL(), "guest:guest@", "guest:"+secret+"@", 1)},
		{"cluster list", "amqp://guest:" + secret + "@" + closed + "/,amqp://guest:" + secret + "@" + freeAddr(t) + "/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := []string{"WARREN_AMQP_URL=" + tt.url, "WARREN_QUEUE=" + q, "WARREN_LOG_LEVEL=debug"}
			p := startWarren(t, env)
			brokertest.WaitFor(t, 20*time.Second, "a connection failure logged", func() bool {
				return strings.Contains(p.out.String(), "cannot connect to broker")
			})
			_, ready := p.status("/readyz")
			_, metrics := p.status("/metrics")
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Errorf("warren exited %d after SIGTERM, want 0", code)
			}
			_, pub := runWarren(t, env, "", "publish", "x")
			for what, out := range map[string]string{"log": p.out.String(), "/readyz": ready, "/metrics": metrics, "publish": pub} {
				if strings.Contains(out, secret) {
					t.Errorf("the password appears in the %s output:\n%s", what, out)
				}
			}
			if !strings.Contains(p.out.String(), "xxxxx") && tt.name != "wrong password" {
				t.Logf("output:\n%s", p.out.String())
			}
		})
	}
}

func TestPublish(t *testing.T) {
	for _, tt := range []struct {
		name      string
		args      []string
		stdin     string
		wantCode  int
		wantQueue int
	}{
		{"arguments", []string{"publish", "-declare", "a", "b", "c"}, "", 0, 3},
		{"count", []string{"publish", "-declare", "-count", "50", "x"}, "", 0, 50},
		{"stdin lines", []string{"publish", "-declare"}, "one\ntwo\r\nthree\n", 0, 3},
		{"bad count", []string{"publish", "-count", "0", "x"}, "", 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			code, out := runWarren(t, brokerEnv(q), tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("warren %v = %d, want %d: %s", tt.args, code, tt.wantCode, out)
			}
			if tt.wantCode != 0 {
				return
			}
			if want := fmt.Sprintf("published %d of %d messages", tt.wantQueue, tt.wantQueue); !strings.Contains(out, want) {
				t.Errorf("warren %v said %q, want %q", tt.args, out, want)
			}
			if n := brokertest.Ready(t, q); n != tt.wantQueue {
				t.Errorf("queue holds %d messages, want %d", n, tt.wantQueue)
			}
		})
	}
}

func TestPublishUnroutableFails(t *testing.T) {
	q := brokertest.Queue(t)
	ex := q + ".ex"
	ch := brokertest.Channel(t)
	if err := ch.ExchangeDeclare(ex, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { brokertest.Channel(t).ExchangeDelete(ex, false, false) })
	// The exchange exists and nothing is bound with this key: the broker
	// would drop the message, and publish must say so.
	env := append(brokerEnv(q), "WARREN_DECLARE=false", "WARREN_EXCHANGE="+ex)
	code, out := runWarren(t, env, "", "publish", "-routing-key", "nobody", "lost")
	if code != 1 || !strings.Contains(out, "published 0 of 1 messages") || !strings.Contains(out, "unroutable") {
		t.Errorf("warren publish to an unbound key = %d, %q; want 1, 0 of 1 published, unroutable", code, out)
	}
}

func TestDeadListAndReplay(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeleteAfter(t, q+".retry.100ms")
	dir := t.TempDir()
	fixed := filepath.Join(dir, "fixed")
	// The command fails until the test "fixes" it, then records each body
	// with the attempt it came at.
	command := fmt.Sprintf(`[ -e %[1]s ] || { echo "not yet" >&2; exit 1; }; echo "$(cat) $WARREN_ATTEMPT" >> %[2]s`, fixed, filepath.Join(dir, "done"))
	// One handler at a time: the test reads the dead messages in the order
	// they died, and two handlers at once would race to the dead-letter
	// queue.
	env := append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command,
		"WARREN_RETRY_DELAYS=100ms", "WARREN_MAX_ATTEMPTS=2", "WARREN_CONCURRENCY=1")
	p := startWarren(t, env)
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "first", "second")
	brokertest.WaitFor(t, 20*time.Second, "both messages dead", func() bool { return brokertest.Ready(t, q+".dead") == 2 })

	for range 2 { // listing twice shows the same: nothing moved, nothing lost
		code, out := runWarren(t, env, "", "dead", "list")
		if code != 0 {
			t.Fatalf("warren dead list = %d: %s", code, out)
		}
		if !strings.Contains(out, q+".dead holds 2 messages") || !strings.Contains(out, "failed 2 attempts") ||
			strings.Index(out, `"first"`) > strings.Index(out, `"second"`) || !strings.Contains(out, `"second"`) {
			t.Errorf("warren dead list said:\n%s\nwant 2 messages, first then second, with the reason", out)
		}
	}
	if n := brokertest.Ready(t, q+".dead"); n != 2 {
		t.Fatalf("%s holds %d messages after listing, want 2", q+".dead", n)
	}

	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runWarren(t, env, "", "dead", "replay", "-limit", "1")
	if code != 0 || !strings.Contains(out, "replayed 1 messages") {
		t.Fatalf("warren dead replay -limit 1 = %d: %s", code, out)
	}
	if code, out := runWarren(t, env, "", "dead", "replay"); code != 0 || !strings.Contains(out, "replayed 1 messages") {
		t.Fatalf("warren dead replay = %d: %s", code, out)
	}
	brokertest.WaitFor(t, 20*time.Second, "both replayed messages handled", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "done"))
		return strings.Count(string(b), "\n") == 2
	})
	b, _ := os.ReadFile(filepath.Join(dir, "done"))
	if got := string(b); got != "first 1\nsecond 1\n" {
		t.Errorf("handled after replay:\n%s\nwant first and second, each at attempt 1", got)
	}
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages after replay, want 0", q+".dead", n)
	}
}

func TestDeliveryLimitEndsCrashLoop(t *testing.T) {
	q := brokertest.Queue(t)
	dir := t.TempDir()
	// "crash" kills warren itself (the command's parent), every time, before
	// anything can be settled: only the broker can count its deliveries.
	command := fmt.Sprintf(`body=$(cat); [ "$body" = crash ] && { kill -9 $PPID; exit 1; }; echo "$body" >> %s`, filepath.Join(dir, "done"))
	env := append(brokerEnv(q), "WARREN_QUEUE_TYPE=quorum", "WARREN_DELIVERY_LIMIT=2",
		"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command, "WARREN_PREFETCH=1", "WARREN_CONCURRENCY=1")
	p := startWarren(t, env)
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "a", "crash", "b")

	// Restart warren whenever it dies, as Kubernetes restarts a container,
	// until the other messages are done and the crashing one is dead.
	crashes := 0
	var done []byte
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("handled: %q", done)
		}
	})
	brokertest.WaitFor(t, 60*time.Second, "the other messages handled, the crashing one dead", func() bool {
		select {
		case <-p.done:
			if code := p.cmd.ProcessState.ExitCode(); code != -1 {
				t.Fatalf("warren exited %d, want killed by the crashing message", code)
			}
			crashes++
			if crashes > 5 {
				t.Fatalf("still crash-looping after %d restarts", crashes)
			}
			p = startWarren(t, env)
		default:
		}
		done, _ = os.ReadFile(filepath.Join(dir, "done"))
		return string(done) == "a\nb\n" && brokertest.Ready(t, q+".dead") == 1
	})
	code, out := runWarren(t, env, "", "dead", "list")
	if code != 0 || !strings.Contains(out, "holds 1 messages") || !strings.Contains(out, `"crash"`) || !strings.Contains(out, "delivery_limit") {
		t.Errorf("warren dead list = %d:\n%s\nwant the crashing message, dead-lettered by the delivery limit", code, out)
	}
	t.Logf("%d crashes before the broker gave up on the message", crashes)
}

// plainBinary is warren built without the race detector, whose shadow
// memory would swamp a memory measurement.
var (
	plainBinaryOnce sync.Once
	plainBinary     string
	plainBinaryErr  error
)

func buildPlain(t *testing.T) string {
	t.Helper()
	plainBinaryOnce.Do(func() {
		plainBinary = filepath.Join(filepath.Dir(binary), "warren-norace")
		out, err := exec.Command("go", "build", "-o", plainBinary, ".").CombinedOutput()
		if err != nil {
			plainBinaryErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if plainBinaryErr != nil {
		t.Fatalf("build warren: %v", plainBinaryErr)
	}
	return plainBinary
}

func TestMemoryBoundedBySlowHandler(t *testing.T) {
	q := brokertest.Queue(t)
	// A handler far slower than the queue: 4 at a time, 50 ms each.
	var handled atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(50 * time.Millisecond)
		handled.Add(1)
	}))
	defer srv.Close()
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: "classic"})
	body := strings.Repeat("k", 1024)
	bodies := make([]string, 20_000)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("%05d%s", i, body[5:])
	}
	brokertest.Publish(t, q, bodies...)

	binary := buildPlain(t)
	addr := freeAddr(t)
	cmd := exec.Command(binary)
	cmd.Env = append(baseEnv(), brokerEnv(q)...)
	cmd.Env = append(cmd.Env, "WARREN_HEALTH_ADDR="+addr, "WARREN_HANDLER=http", "WARREN_HTTP_URL="+srv.URL,
		"WARREN_PREFETCH=1000", "WARREN_CONCURRENCY=4", "WARREN_LOG_LEVEL=warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	brokertest.WaitFor(t, 20*time.Second, "handling under way", func() bool { return handled.Load() > 20 })
	// Sample for a few seconds, while 1000 messages sit prefetched and
	// thousands more wait in the queue.
	var peak, early int64
	for i := 0; i < 40; i++ {
		r := warrentest.RSS(t, cmd.Process.Pid)
		peak = max(peak, r)
		if i == 10 {
			early = r
		}
		time.Sleep(100 * time.Millisecond)
	}
	last := warrentest.RSS(t, cmd.Process.Pid)
	t.Logf("RSS: %.1f MiB after 1 s, %.1f MiB after 4 s, peak %.1f MiB; %d handled",
		float64(early)/(1<<20), float64(last)/(1<<20), float64(peak)/(1<<20), handled.Load())
	if peak > 64<<20 {
		t.Errorf("peak RSS %.1f MiB at prefetch 1000 with 1 KiB messages, want under 64 MiB", float64(peak)/(1<<20))
	}
	if last > early+8<<20 {
		t.Errorf("RSS grew from %.1f to %.1f MiB with a handler slower than the queue, want it flat", float64(early)/(1<<20), float64(last)/(1<<20))
	}
	if n := brokertest.Ready(t, q); n < 10_000 {
		t.Errorf("only %d messages left waiting in the queue: the test did not hold the handler slower than the queue", n)
	}
}

// groupMembers returns the live processes (zombies aside) whose process
// group is one of pgids.
func groupMembers(t *testing.T, pgids []int) []string {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var live []string
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b)[i+1:])
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		pgrp, _ := strconv.Atoi(f[2])
		if slices.Contains(pgids, pgrp) {
			live = append(live, strings.TrimSpace(string(b)[:i+1]))
		}
	}
	return live
}

// TestWayOutKillsTheHandlersProcesses: when warren stops at once (a second
// signal, SIGQUIT), the exec handler's process groups die first. Left
// running, they would finish messages the broker has already handed to
// another consumer.
func TestWayOutKillsTheHandlersProcesses(t *testing.T) {
	for _, tt := range []struct {
		name          string
		first, second syscall.Signal // first 0: none
		wantSignal    syscall.Signal // what ends warren; 0: an exit code
		wantCode      int
	}{
		{"second SIGTERM", syscall.SIGTERM, syscall.SIGTERM, syscall.SIGTERM, 0},
		{"second SIGHUP", syscall.SIGHUP, syscall.SIGHUP, syscall.SIGHUP, 0},
		{"second SIGINT", syscall.SIGINT, syscall.SIGINT, syscall.SIGINT, 0},
		// Go's own SIGQUIT: a goroutine dump, exit 2, after the kill.
		{"SIGQUIT while draining", syscall.SIGTERM, syscall.SIGQUIT, 0, 2},
		{"SIGQUIT", 0, syscall.SIGQUIT, 0, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			dir := t.TempDir()
			command := fmt.Sprintf(`echo $$ > %[1]s/"$WARREN_MESSAGE_ID".pid; sleep 5; touch %[1]s/"$WARREN_MESSAGE_ID".done`, dir)
			p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command,
				"WARREN_PREFETCH=2", "WARREN_CONCURRENCY=2", "WARREN_SHUTDOWN_TIMEOUT=60s"))
			p.waitStatus(t, "/readyz", http.StatusOK)
			brokertest.Publish(t, q, "m-1", "m-2")
			var pgids []int
			brokertest.WaitFor(t, 10*time.Second, "2 commands running", func() bool {
				pgids = nil
				files, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
				for _, f := range files {
					b, _ := os.ReadFile(f)
					if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
						pgids = append(pgids, pid)
					}
				}
				return len(pgids) == 2
			})
			if tt.first != 0 {
				p.signal(t, tt.first)
				p.waitStatus(t, "/readyz", http.StatusServiceUnavailable)
			}
			p.signal(t, tt.second)
			code := p.wait(t, 10*time.Second)
			ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
			switch {
			case tt.wantSignal != 0 && (!ws.Signaled() || ws.Signal() != tt.wantSignal):
				t.Errorf("warren ended with %v, want killed by %v", p.cmd.ProcessState, tt.wantSignal)
			case tt.wantSignal == 0 && code != tt.wantCode:
				t.Errorf("warren ended with %v, want exit code %d", p.cmd.ProcessState, tt.wantCode)
			}
			// Whatever is left of the groups could still finish its
			// message; once none is, nothing can.
			brokertest.WaitFor(t, 2*time.Second, "no process left of the commands' groups", func() bool {
				return len(groupMembers(t, pgids)) == 0
			})
			if left := groupMembers(t, pgids); len(left) > 0 {
				t.Errorf("processes of the commands' groups outlive warren: %q", left)
			}
			if done, _ := filepath.Glob(filepath.Join(dir, "*.done")); len(done) != 0 {
				t.Errorf("%d commands finished their message, want none", len(done))
			}
			if !strings.Contains(p.out.String(), "stopping at once") {
				t.Errorf("warren did not log that it stops at once:\n%s", p.out.String())
			}
			brokertest.WaitFor(t, 10*time.Second, "both messages back in the queue", func() bool { return brokertest.Ready(t, q) == 2 })
		})
	}
}

// TestSIGHUPDrainsLikeSIGTERM: a closed terminal or a supervisor's SIGHUP
// drains and exits 0, as SIGTERM does.
func TestSIGHUPDrainsLikeSIGTERM(t *testing.T) {
	q := brokertest.Queue(t)
	dir := t.TempDir()
	command := fmt.Sprintf(`touch %[1]s/"$WARREN_MESSAGE_ID".started; sleep 1; touch %[1]s/"$WARREN_MESSAGE_ID".done`, dir)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command,
		"WARREN_PREFETCH=1", "WARREN_CONCURRENCY=1", "WARREN_SHUTDOWN_TIMEOUT=20s"))
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "m-1", "m-2")
	brokertest.WaitFor(t, 10*time.Second, "a command running", func() bool {
		started, _ := filepath.Glob(filepath.Join(dir, "*.started"))
		return len(started) == 1
	})
	p.signal(t, syscall.SIGHUP)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren ended with %v after SIGHUP, want exit 0", p.cmd.ProcessState)
	}
	if done, _ := filepath.Glob(filepath.Join(dir, "*.done")); len(done) != 1 {
		t.Errorf("%d commands finished, want the one in flight", len(done))
	}
	if !strings.Contains(p.out.String(), "shutting down") {
		t.Errorf("warren did not log its drain:\n%s", p.out.String())
	}
}

// TestSIGTERMEndsAHangingHandshake: a node that accepts the connection and
// never answers does not hold warren's exit after SIGTERM for the 15s
// handshake limit.
func TestSIGTERMEndsAHangingHandshake(t *testing.T) {
	done := make(chan struct{})
	addr, accepted := brokertest.Listen(t, func(c net.Conn) {
		<-done // held open, silent, until the test ends
	})
	t.Cleanup(func() { close(done) }) // runs before Listen's own cleanup
	p := startWarren(t, []string{"WARREN_AMQP_URL=amqp://guest:guest@" + addr + "/", "WARREN_QUEUE=" + brokertest.Name(t)})
	brokertest.WaitFor(t, 10*time.Second, "warren's connection accepted", func() bool { return len(accepted) > 0 })
	p.waitStatus(t, "/readyz", http.StatusServiceUnavailable)
	// /readyz says what warren waits for, not "starting".
	want := "connecting: handshake with " + addr
	brokertest.WaitFor(t, 10*time.Second, "/readyz saying "+want, func() bool {
		_, body := p.status("/readyz")
		return strings.Contains(body, want)
	})
	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("warren took %v to exit after SIGTERM in a hanging handshake, want under 3s", took)
	}
}
