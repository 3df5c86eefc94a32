package cluster

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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// binary is the warren binary built once for the suite, with the race
// detector: a race in a failover path fails the process, and the test.
var binary string

func TestMain(m *testing.M) {
	if _, ok := profiles[os.Getenv("WARREN_CLUSTER")]; !ok {
		os.Exit(m.Run()) // skipped: nothing to build
	}
	dir, err := os.MkdirTemp("", "warren-cluster-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = warrentest.Build(dir, "../cmd/warren", nil, "-race")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// endpoint is the HTTP server every replica posts to. It records every
// body and takes at most rate messages per second, as a downstream
// service with a capacity does, so that the backlog lasts through the
// faults. Bodies that start with "poison-" get 422 (dead at once); those
// that start with "flaky-" get 503 on their first attempt (retried).
type endpoint struct {
	srv *httptest.Server

	mu       sync.Mutex
	interval time.Duration // between two answers; 0: no limit
	next     time.Time
	requests map[string]int
	acked    map[string]int // 2xx answered
	oks      int
	redeliv  int
}

func newEndpoint(t *testing.T, rate float64) *endpoint {
	t.Helper()
	e := &endpoint{requests: map[string]int{}, acked: map[string]int{}}
	if rate > 0 {
		e.interval = time.Duration(float64(time.Second) / rate)
	}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	b := string(body)
	e.mu.Lock()
	e.requests[b]++
	if r.Header.Get("X-Warren-Redelivered") == "true" {
		e.redeliv++
	}
	at := time.Now()
	if e.next.After(at) {
		at = e.next
	}
	e.next = at.Add(e.interval)
	e.mu.Unlock()
	select {
	case <-time.After(time.Until(at)):
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

// handled returns the 2xx answers so far.
func (e *endpoint) handled() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.oks
}

// missing returns the bodies of want never answered 2xx or, for poison
// ones, never received.
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
// before, and how many requests came redelivered.
func (e *endpoint) duplicates() (dups, redelivered int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.oks - len(e.acked), e.redeliv
}

// gorace fails a replica at once on a race the detector finds, with an
// exit code of its own.
const gorace = "halt_on_error=1 exitcode=66"

// replica is one warren process, as a pod of a Deployment.
type replica struct {
	name   string
	health string
	out    *warrentest.Buffer
	cmd    *exec.Cmd
	done   chan struct{}
}

func startReplica(t *testing.T, name string, env []string) *replica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &replica{name: name, health: "http://" + addr, out: &warrentest.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(binary)
	r.cmd.Env = append(append(warrentest.Env(gorace), env...), "WARREN_HEALTH_ADDR="+addr, "WARREN_CONNECTION_NAME=cluster-"+name)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			t.Logf("%s said:\n%s", r.name, tail(r.out.String(), 40))
		}
	})
	return r
}

// stop sends SIGTERM and fails the test unless the process exits 0 in
// time: the drain works on a cluster too.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", r.name, err)
	}
	select {
	case <-r.done:
	case <-time.After(45 * time.Second):
		t.Fatalf("%s did not exit within 45s of SIGTERM", r.name)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited %d after SIGTERM, want 0", r.name, code)
	}
}

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
	code, _ := r.get("/readyz")
	return code == http.StatusOK
}

// node returns the node the replica says it is on, host:port, from
// warren_broker_info; "" if none.
func (r *replica) node() string {
	code, body := r.get("/metrics")
	if code != http.StatusOK {
		return ""
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, `warren_broker_info{node="`); ok {
			addr, value, _ := strings.Cut(rest, `"} `)
			if value == "1" {
				return addr
			}
		}
	}
	return ""
}

// losses counts the connections the replica lost, from its logs.
func (r *replica) losses() int {
	return strings.Count(r.out.String(), `"msg":"connection lost"`)
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// publish publishes bodies to queue through the cluster, persistent and
// confirmed, failing over as warren publish does.
func publish(t *testing.T, urls []string, queue string, bodies []string) {
	t.Helper()
	d := &broker.Dialer{URLs: urls}
	s := &broker.Stream{Dial: d.Dial, Window: 500, RetryFor: time.Minute}
	msgs := func(yield func(amqp.Publishing) bool) {
		for _, b := range bodies {
			if !yield(amqp.Publishing{ContentType: "text/plain", MessageId: b, Body: []byte(b)}) {
				return
			}
		}
	}
	n, err := s.Publish(context.Background(), "", queue, msgs)
	if err != nil || n != len(bodies) {
		t.Fatalf("publish: %d of %d confirmed: %v", n, len(bodies), err)
	}
}

// drain takes every message of queue through the cluster, acking them,
// and returns their bodies.
func drain(t *testing.T, urls []string, queue string) []string {
	t.Helper()
	conn, _, err := (&broker.Dialer{URLs: urls}).Dial(context.Background())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, d := range brokertest.GetOn(t, ch, queue, -1) {
		bodies = append(bodies, string(d.Body))
	}
	return bodies
}

// deleteQueues deletes the queues through the cluster, if it answers.
func deleteQueues(t *testing.T, urls []string, queues ...string) {
	conn, _, err := (&broker.Dialer{URLs: urls}).Dial(context.Background())
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

// nodeURLs returns the URLs of the cluster's nodes.
func nodeURLs(c *brokertest.Cluster) []string {
	return broker.ParseURLs(c.URLs())
}
