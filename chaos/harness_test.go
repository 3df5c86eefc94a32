package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
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

// buildWarren builds the binary as the Makefile does (no race detector:
// the suite measures what users run) and returns its path.
func buildWarren(t *testing.T) string {
	t.Helper()
	bin, err := warrentest.Build(t.TempDir(), "../cmd/warren", []string{"CGO_ENABLED=0"}, "-trimpath")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Endpoint modes.
const (
	answer int32 = iota // 204 after a few ms
	fail                // 503 at once
	hang                // answer nothing until the client gives up
)

// endpoint is the HTTP server every replica posts to. It records every
// body and answers 204 after a few ms of work. While limited, it works on
// one request at a time, as a downstream service with a capacity does, so
// that the queue lasts through the faults; a request waits its turn, and
// leaves the line when its client gives up. Bodies that start with
// "poison-" get 422 (the message is dead); those that start with "flaky-"
// get 503 on their first attempt (it is retried).
type endpoint struct {
	srv  *httptest.Server
	work time.Duration
	line chan struct{} // one request at a time while limited

	mode atomic.Int32

	mu          sync.Mutex
	hold        time.Duration // how long a request holds the line; 0: no line
	requests    map[string]int
	acked       map[string]int // 2xx answered
	redelivered int
	inflight    map[string]int // requests being answered, by replica path
	total, oks  int
	last        time.Time // of the last request
}

func newEndpoint(t *testing.T, work time.Duration) *endpoint {
	t.Helper()
	e := &endpoint{work: work, line: make(chan struct{}, 1), requests: map[string]int{}, acked: map[string]int{}, inflight: map[string]int{}}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	return e
}

// URL returns the URL replica name posts to.
func (e *endpoint) URL(name string) string { return e.srv.URL + "/" + name }

// limit sets how many messages per second the endpoint takes; 0 lifts the
// limit.
func (e *endpoint) limit(rate float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hold = 0
	if rate > 0 {
		e.hold = time.Duration(float64(time.Second) / rate)
	}
}

func (e *endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	b := string(body)
	e.mu.Lock()
	e.requests[b]++
	e.total++
	e.last = time.Now()
	if r.Header.Get("X-Warren-Redelivered") == "true" {
		e.redelivered++
	}
	e.inflight[r.URL.Path]++
	hold := e.hold
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.inflight[r.URL.Path]--
		e.mu.Unlock()
	}()

	switch e.mode.Load() {
	case fail:
		http.Error(w, "endpoint failing on purpose", http.StatusServiceUnavailable)
		return
	case hang:
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		return
	}
	work := e.work
	if hold > 0 {
		select {
		case e.line <- struct{}{}:
			defer func() { <-e.line }()
			work = max(work, hold)
		case <-r.Context().Done():
			return
		}
	}
	select {
	case <-time.After(work):
	case <-r.Context().Done():
		return
	}
	switch {
	case strings.HasPrefix(b, "poison-"):
		http.Error(w, "no retry can fix this one", http.StatusUnprocessableEntity)
		return
	case strings.HasPrefix(b, "flaky-") && r.Header.Get("X-Warren-Attempt") == "1":
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	e.mu.Lock()
	e.acked[b]++
	e.oks++
	e.mu.Unlock()
}

// idle reports whether the endpoint got no request for d.
func (e *endpoint) idle(d time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return time.Since(e.last) > d && sum(e.inflight) == 0
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// busy returns how many requests of replica name the endpoint is
// answering.
func (e *endpoint) busy(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inflight["/"+name]
}

// stats returns the requests and 2xx answers so far.
func (e *endpoint) stats() (requests, oks, redelivered int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total, e.oks, e.redelivered
}

// missing returns the bodies of want never answered 2xx (or, for poison
// ones, never received).
func (e *endpoint) missing(want []string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, b := range want {
		if strings.HasPrefix(b, "poison-") && e.requests[b] == 0 || !strings.HasPrefix(b, "poison-") && e.acked[b] == 0 {
			out = append(out, b)
		}
	}
	return out
}

// duplicates returns how many 2xx answers were for bodies answered 2xx
// before: messages handled more than once.
func (e *endpoint) duplicates() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.oks - len(e.acked)
}

// replica is one warren process, as a pod of a Deployment: it keeps its
// name, health address and output over its restarts.
type replica struct {
	name   string
	bin    string
	env    []string
	health string
	out    *warrentest.Buffer // every run's output, for the report and the secret check
	seen   *captured          // everything else it showed, for the secret check

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	runs int
	// stops counts the processes asked to stop that exited 0.
	stops int
}

// captured collects what processes showed besides their logs.
type captured struct {
	mu    sync.Mutex
	texts map[string]string
}

func (c *captured) add(what, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.texts[what] += text
}

func newReplica(t *testing.T, name, bin string, env []string, seen *captured) *replica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &replica{name: name, bin: bin, health: "http://" + addr, out: &warrentest.Buffer{}, seen: seen,
		env: append(append(warrentest.Env(""), env...), "WARREN_HEALTH_ADDR="+addr, "WARREN_CONNECTION_NAME=chaos-"+name)}
	t.Cleanup(func() {
		r.mu.Lock()
		cmd, done := r.cmd, r.done
		r.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s said:\n%s", r.name, tail(r.out.String(), 60))
		}
	})
	return r
}

// start runs the replica's process, and records what ps and /proc show of
// it.
func (r *replica) start(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		t.Fatalf("%s already runs", r.name)
	}
	r.runs++
	fmt.Fprintf(r.out, "--- %s run %d\n", r.name, r.runs)
	cmd := exec.Command(r.bin)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = r.out, r.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", r.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	r.cmd, r.done = cmd, done
	for _, f := range []string{"cmdline", "environ"} {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", cmd.Process.Pid, f)); err == nil {
			r.seen.add(r.name+" /proc/pid/"+f, string(b))
		}
	}
}

// pid returns the process id of the running process, 0 if none runs.
func (r *replica) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// stop sends SIGTERM and waits for the process to exit; it fails the test
// unless the process exits 0 within its shutdown timeout and a margin.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.scrape()
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", r.name, err)
	}
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		// Where it is stuck: Go prints every goroutine on SIGQUIT.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s did not exit within 45s of SIGTERM; its goroutines:\n%s", r.name, tail(r.out.String(), 400))
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited %d after SIGTERM, want 0", r.name, code)
	} else {
		r.mu.Lock()
		r.stops++
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.cmd, r.done = nil, nil
	r.mu.Unlock()
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *replica) kill(t *testing.T) {
	t.Helper()
	r.scrape()
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd, r.done = nil, nil
	r.mu.Unlock()
	if cmd == nil {
		t.Fatalf("kill %s: not running", r.name)
	}
	_ = cmd.Process.Kill()
	<-done
}

// get returns the status and body of GET path on the replica's health
// server, 0 if it does not answer.
func (r *replica) get(path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(r.health + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *replica) ready() bool {
	code, body := r.get("/readyz")
	r.seen.add(r.name+" /readyz", body)
	return code == http.StatusOK
}

// scrape keeps the replica's metrics for the secret check, and returns
// its reconnects so far.
func (r *replica) scrape() float64 {
	code, body := r.get("/metrics")
	if code != http.StatusOK {
		return 0
	}
	r.seen.add(r.name+" /metrics", body)
	return metric(body, "warren_reconnects_total")
}

// metric reads a counter or gauge without labels from Prometheus text.
func metric(text, name string) float64 {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// connectionsLost counts the connections and channels the replica lost,
// over all its runs, from its logs.
func (r *replica) connectionsLost() int {
	out := r.out.String()
	return strings.Count(out, `"msg":"connection lost"`) + strings.Count(out, `"msg":"channel closed, opening a new one"`)
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// ready returns the ready messages of queue, from a passive declaration:
// unlike rabbitmqctl list_queues, whose figures for a quorum queue come
// every few seconds, it is up to date.
func ready(t *testing.T, url, queue string) int {
	t.Helper()
	ch, closeConn := channel(t, url)
	defer closeConn()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect %s: %v", queue, err)
	}
	return q.Messages
}

// publishAll publishes bodies to queue on the node, persistent, with
// confirms, many in flight at once.
func publishAll(t *testing.T, url, queue string, bodies []string) {
	t.Helper()
	ch, closeConn := channel(t, url)
	defer closeConn()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const window = 500
	var pending []*amqp.DeferredConfirmation
	wait := func(dc *amqp.DeferredConfirmation) {
		if !dc.Wait() {
			t.Fatalf("publish: the broker refused a message")
		}
	}
	for _, b := range bodies {
		if len(pending) == window {
			wait(pending[0])
			pending = pending[1:]
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, true, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "text/plain", MessageId: b, Body: []byte(b)})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		pending = append(pending, dc)
	}
	for _, dc := range pending {
		wait(dc)
	}
}

// declare declares a durable queue with args on the node, as warren does.
func declare(t *testing.T, url, queue string, args amqp.Table) {
	t.Helper()
	ch, closeConn := channel(t, url)
	defer closeConn()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
}

// deleteQueues deletes the queues on the node, if it answers.
func deleteQueues(t *testing.T, url string, queues ...string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Logf("delete queues: %v", err)
		return
	}
	defer conn.Close()
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		_, _ = ch.QueueDelete(q, false, false, false)
		ch.Close()
	}
}

// drain takes every message of queue on the node, acking them, and returns
// their bodies.
func drain(t *testing.T, url, queue string) []string {
	t.Helper()
	ch, closeConn := channel(t, url)
	defer closeConn()
	var bodies []string
	for _, d := range brokertest.GetOn(t, ch, queue, -1) {
		bodies = append(bodies, string(d.Body))
	}
	return bodies
}

// rss returns the resident set size of process pid, in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// channel opens a channel on a connection of its own to the node at url;
// closeConn closes that connection.
func channel(t *testing.T, url string) (ch *amqp.Channel, closeConn func()) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ch, err = conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return ch, func() { conn.Close() }
}
