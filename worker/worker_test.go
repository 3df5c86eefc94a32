package worker_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// countingDialer counts the connections a worker opens.
type countingDialer struct {
	broker.Dialer
	dials atomic.Int32
}

func (d *countingDialer) Dial(ctx context.Context) (*amqp.Connection, string, error) {
	d.dials.Add(1)
	return d.Dialer.Dial(ctx)
}

// harness runs a worker against the test broker.
type harness struct {
	w      *worker.Worker
	name   string // connection name, to find it on the broker
	dialer *countingDialer
	reg    *prometheus.Registry
	logs   *observer.ObservedLogs
	cancel context.CancelFunc
	done   chan error
}

// start runs a worker on cfg until the test ends. It fills in what cfg
// leaves empty: dialer, logger, registry.
func start(t *testing.T, cfg worker.Config) *harness {
	t.Helper()
	h := &harness{name: brokertest.Name(t), reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	if cfg.Dialer == nil {
		h.dialer = &countingDialer{Dialer: broker.Dialer{URLs: []string{brokertest.URL()}, Name: h.name}}
		cfg.Dialer = h.dialer
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	cores := []zapcore.Core{zaptest.NewLogger(t).Core(), core}
	if cfg.Logger != nil { // the test's own, beside the harness's
		cores = append(cores, cfg.Logger.Core())
	}
	cfg.Logger = zap.New(zapcore.NewTee(cores...))
	cfg.Registerer = h.reg
	for _, d := range cfg.Topology.RetryDelays {
		brokertest.DeleteAfter(t, cfg.Topology.RetryQueue(d))
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	h.w = w
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop cancels the worker and waits for Run to return.
func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(time.Minute):
		t.Fatal("worker did not stop within a minute")
	}
	return nil
}

func (h *harness) waitReady(t *testing.T) {
	t.Helper()
	brokertest.WaitFor(t, 20*time.Second, "worker ready", func() bool { return h.w.Ready() == nil })
}

// startLogged is start with hook called, with the harness, at each line
// the worker logs at info level or above once start has returned.
func startLogged(t *testing.T, cfg worker.Config, hook func(*harness, zapcore.Entry) error) *harness {
	t.Helper()
	var hp atomic.Pointer[harness]
	own, _ := observer.New(zapcore.InfoLevel)
	cfg.Logger = zap.New(zapcore.RegisterHooks(own, func(e zapcore.Entry) error {
		if h := hp.Load(); h != nil {
			return hook(h, e)
		}
		return nil
	}))
	h := start(t, cfg)
	hp.Store(h)
	return h
}

// waitReconnected waits for the worker to consume again after its first
// reconnect.
func (h *harness) waitReconnected(t *testing.T) {
	t.Helper()
	brokertest.WaitFor(t, 20*time.Second, "consuming again", func() bool {
		return h.metric(t, "warren_reconnects_total") == 1 && h.w.Ready() == nil
	})
}

// metric returns the value of a counter or gauge, summed over its series
// that carry the given label values.
func (h *harness) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, err := h.gather(name, labels...)
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return v
}

// gather is metric without the test: for goroutines other than the test's,
// which must not end it.
func (h *harness) gather(name string, labels ...string) (float64, error) {
	mfs, err := h.reg.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum, nil
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// recorder is a handler that counts the bodies it sees.
type recorder struct {
	mu          sync.Mutex
	seen        map[string]int
	total       int
	redelivered int
	fn          func(ctx context.Context, m *worker.Message, attempt int) error
}

func newRecorder(fn func(ctx context.Context, m *worker.Message, attempt int) error) *recorder {
	return &recorder{seen: make(map[string]int), fn: fn}
}

func (r *recorder) Handle(ctx context.Context, m *worker.Message) error {
	r.mu.Lock()
	r.seen[string(m.Body)]++
	r.total++
	if m.Redelivered {
		r.redelivered++
	}
	attempt := r.seen[string(m.Body)]
	r.mu.Unlock()
	if r.fn != nil {
		return r.fn(ctx, m, attempt)
	}
	return nil
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) count(body string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[body]
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// missing returns the bodies the recorder never saw.
func (r *recorder) missing(bodies []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, b := range bodies {
		if r.seen[b] == 0 {
			out = append(out, b)
		}
	}
	return out
}

func topology(q string) broker.Topology {
	return broker.Topology{Queue: q, Declare: true}
}

func TestConsumesEveryMessageOnce(t *testing.T) {
	for _, tt := range []struct {
		name      string
		queueType string
	}{
		{"classic", broker.Classic},
		{"quorum", broker.Quorum},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			rec := newRecorder(nil)
			h := start(t, worker.Config{
				Topology:    broker.Topology{Queue: q, QueueType: tt.queueType, Declare: true},
				Handler:     rec,
				Prefetch:    32,
				Concurrency: 8,
			})
			h.waitReady(t)
			bodies := brokertest.Bodies("m", 1000)
			brokertest.Publish(t, q, bodies...)
			brokertest.WaitFor(t, 30*time.Second, "every message handled", func() bool { return rec.distinct() == len(bodies) })
			brokertest.WaitFor(t, 10*time.Second, "every message acked", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
			})
			if err := h.stop(t); err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			if got := rec.calls(); got != len(bodies) {
				t.Errorf("handler called %d times for %d messages, want each once", got, len(bodies))
			}
			if n := brokertest.Ready(t, q); n != 0 {
				t.Errorf("queue holds %d messages after all were acked, want 0", n)
			}
		})
	}
}

func TestReconnectsWhenBrokerClosesConnection(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
		time.Sleep(5 * time.Millisecond) // keep messages in flight when the link dies
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 50, Concurrency: 4})
	h.waitReady(t)
	bodies := brokertest.Bodies("m", 5000)
	brokertest.Publish(t, q, bodies...)

	const closes = 3
	for i := range closes {
		brokertest.WaitFor(t, 30*time.Second, "consumption under way", func() bool {
			return rec.distinct() >= (i+1)*len(bodies)/(closes+2)
		})
		if n := brokertest.CloseConnections(t, h.name); n != 1 {
			t.Fatalf("broker closed %d connections named %q, want 1", n, h.name)
		}
		brokertest.WaitFor(t, 30*time.Second, "worker back after the close", func() bool {
			return h.dialer.dials.Load() == int32(i+2) && h.w.Ready() == nil
		})
	}
	brokertest.WaitFor(t, 60*time.Second, "every message handled", func() bool { return rec.distinct() == len(bodies) })
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if m := rec.missing(bodies); len(m) > 0 {
		t.Errorf("%d messages never reached the handler, e.g. %q", len(m), m[0])
	}
	if n := brokertest.Ready(t, q); n != 0 {
		t.Errorf("queue holds %d messages after the run, want 0", n)
	}
	if got := h.metric(t, "warren_reconnects_total"); got < closes {
		t.Errorf("warren_reconnects_total = %v, want at least %d", got, closes)
	}
	rec.mu.Lock()
	redelivered := rec.redelivered
	rec.mu.Unlock()
	if redelivered == 0 {
		t.Errorf("no message came back redelivered: the closes did not hit messages in flight, the test proved nothing")
	}
	t.Logf("%d deliveries for %d messages, %d redelivered, %v settlements lost with their channel",
		rec.calls(), len(bodies), redelivered, h.metric(t, "warren_stale_settlements_total"))
}

// TestChannelErrorUnderLoadIsNotACancel fails the worker's channel
// while deliveries flow, again and again: each is reported as the channel
// error it is, never as a consumer the broker cancelled (the library
// closes the cancel notifications too when a channel dies, and a closed
// one read as a cancel of consumer "": a second reconnect counted, the
// queue declared again on a dead channel). A channel error under load may
// cost the connection too: RabbitMQ still sends deliveries after its
// channel.close, and amqp091-go closes the connection on a frame for a
// channel it has closed; warren dials again, and counts that once more.
func TestChannelErrorUnderLoadIsNotACancel(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	// Each message takes a little while, so that the test's publisher
	// stays ahead of the worker (the adaptive window drains a noop
	// handler faster than a publisher under the race detector fills the
	// queue): a backlog stays queued and deliveries stay in flight.
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		time.Sleep(2 * time.Millisecond)
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Concurrency: 4})
	// Each channel that dies at once backs the next one off further: six
	// faults in a row wait some 3 s at most.
	const faults = 6
	batch := 0
	for i := 1; i <= faults; {
		before := h.metric(t, "warren_reconnects_total")
		brokertest.WaitFor(t, 30*time.Second, "consuming, messages flowing", func() bool {
			ready, unacked, _ := brokertest.Counts(t, q)
			if ready < 10000 {
				batch++
				brokertest.Publish(t, q, brokertest.Bodies(fmt.Sprintf("b%d-", batch), 20000)...)
			}
			return h.w.Ready() == nil && unacked > 0
		})
		if brokertest.FailChannels(t, h.name) == 0 {
			continue // the connection was being replaced
		}
		brokertest.WaitFor(t, 20*time.Second, "a reconnect counted", func() bool { return h.metric(t, "warren_reconnects_total") > before })
		i++
	}
	brokertest.WaitFor(t, 30*time.Second, "consuming again", func() bool { return h.w.Ready() == nil })
	if n := h.logs.FilterMessageSnippet("consumer cancelled by the broker").Len(); n != 0 {
		t.Errorf("%d channel errors reported as consumers cancelled by the broker, want none", n)
	}
	// A late frame for a dead channel may still cost the connection now:
	// the count settles once that loss is said and counted too. A repeat
	// of the same failure is logged again at debug ("... (again)").
	var (
		got             float64
		channels, conns int
	)
	defer func() {
		t.Logf("%d channel errors: %d channels reopened, %d connections dialled again, %v reconnects counted", faults, channels, conns, got)
	}()
	brokertest.WaitFor(t, 10*time.Second, "warren_reconnects_total to count each channel and connection lost once", func() bool {
		channels = h.logs.FilterMessageSnippet("channel closed, opening a new one").Len()
		conns = h.logs.FilterMessage("connection lost").Len()
		got = h.metric(t, "warren_reconnects_total")
		return got == float64(channels+conns)
	})
}

// TestReconnectIsSaidBeforeItIsCounted fails the consuming channel, the
// consumer and the connection: by the time warren_reconnects_total counts
// a loss, warren has said so in its log and in its readiness, so that an
// operator (or a test) who sees the count sees why, and a readiness probe
// never reports a lost connection as ready while it is being closed.
func TestReconnectIsSaidBeforeItIsCounted(t *testing.T) {
	for _, tt := range []struct {
		name    string
		message string // the line that says it
		fault   func(t *testing.T, h *harness, q string) int
	}{
		{"channel error", "channel closed, opening a new one", func(t *testing.T, h *harness, _ string) int {
			return brokertest.FailChannels(t, h.name)
		}},
		{"queue deleted", "consumer cancelled by the broker; declaring and consuming again once its deliveries are settled",
			func(t *testing.T, _ *harness, q string) int { brokertest.DeleteQueues(t, q); return 1 }},
		{"connection closed", "connection lost", func(t *testing.T, h *harness, _ string) int {
			return brokertest.CloseConnections(t, h.name)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			brokertest.NeedCtl(t)
			q := brokertest.Queue(t)
			// What the worker showed at the moment it logged the loss.
			type seen struct {
				counted float64
				ready   error
			}
			var (
				mu    sync.Mutex
				lines []seen
			)
			h := startLogged(t, worker.Config{Topology: topology(q), Handler: newRecorder(nil)}, func(h *harness, e zapcore.Entry) error {
				if e.Message != tt.message {
					return nil
				}
				counted, err := h.gather("warren_reconnects_total")
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				lines = append(lines, seen{counted, h.w.Ready()})
				return nil
			})
			h.waitReady(t)
			if n := tt.fault(t, h, q); n != 1 {
				t.Fatalf("fault hit %d of %q, want 1", n, h.name)
			}
			h.waitReconnected(t)
			mu.Lock()
			defer mu.Unlock()
			if len(lines) != 1 {
				t.Fatalf("%d lines %q for one loss, want 1", len(lines), tt.message)
			}
			if lines[0].counted != 0 {
				t.Errorf("warren_reconnects_total = %v when the loss was logged, want 0: counted before it was said", lines[0].counted)
			}
			if lines[0].ready == nil {
				t.Errorf("ready when the loss was logged, want not ready")
			}
		})
	}
}

// TestReconnectedIsSaidBeforeItIsShown checks the other half of a
// reconnect: warren logs "connected" before warren_connected turns 1, and
// "consuming" before it reports ready and warren_consuming turns 1, so that
// whoever sees the gauge or the probe turn finds the line that says why.
func TestReconnectedIsSaidBeforeItIsShown(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	// What the worker showed at the moment it logged each line, once the
	// connection was lost.
	type seen struct {
		line                 string
		connected, consuming float64
		ready                error
	}
	var (
		mu    sync.Mutex
		lines []seen
		lost  atomic.Bool
	)
	h := startLogged(t, worker.Config{Topology: topology(q), Handler: newRecorder(nil)}, func(h *harness, e zapcore.Entry) error {
		if !lost.Load() || (e.Message != "connected" && e.Message != "consuming") {
			return nil
		}
		connected, err := h.gather("warren_connected")
		if err != nil {
			return err
		}
		consuming, err := h.gather("warren_consuming")
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, seen{e.Message, connected, consuming, h.w.Ready()})
		return nil
	})
	h.waitReady(t)
	lost.Store(true)
	if n := brokertest.CloseConnections(t, h.name); n != 1 {
		t.Fatalf("closed %d connections of %q, want 1", n, h.name)
	}
	h.waitReconnected(t)
	mu.Lock()
	defer mu.Unlock()
	want := []seen{{line: "connected"}, {line: "consuming", connected: 1}}
	if len(lines) != len(want) {
		t.Fatalf("lines after the loss: %+v, want %+v", lines, want)
	}
	for i, got := range lines {
		w := want[i]
		if got.line != w.line || got.connected != w.connected || got.consuming != w.consuming {
			t.Errorf("when %q was logged: warren_connected %v, warren_consuming %v; want %v, %v: shown before it was said",
				got.line, got.connected, got.consuming, w.connected, w.consuming)
		}
		if got.ready == nil {
			t.Errorf("ready when %q was logged, want not yet", got.line)
		}
	}
}

// TestRecoversOnTheSameConnection injects the faults that cost a channel or
// a consumer but not the connection: warren must recover without dialling.
func TestRecoversOnTheSameConnection(t *testing.T) {
	for _, tt := range []struct {
		name    string
		needCtl bool
		fault   func(t *testing.T, h *harness, q string)
	}{
		{"channel error", true, func(t *testing.T, h *harness, _ string) {
			if n := brokertest.FailChannels(t, h.name); n != 1 {
				t.Fatalf("broker failed %d channels of %q, want 1", n, h.name)
			}
		}},
		// The broker cancels the consumer; warren declares the queue again.
		{"queue deleted", false, func(t *testing.T, _ *harness, q string) { brokertest.DeleteQueues(t, q) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needCtl {
				brokertest.NeedCtl(t)
			}
			q := brokertest.Queue(t)
			rec := newRecorder(nil)
			h := start(t, worker.Config{Topology: topology(q), Handler: rec})
			h.waitReady(t)
			brokertest.Publish(t, q, "before")
			brokertest.WaitFor(t, 10*time.Second, "first message", func() bool { return rec.count("before") == 1 })

			tt.fault(t, h, q)
			h.waitReconnected(t)
			brokertest.Publish(t, q, "after")
			brokertest.WaitFor(t, 10*time.Second, "message after the fault", func() bool { return rec.count("after") == 1 })
			if got := h.dialer.dials.Load(); got != 1 {
				t.Errorf("worker dialed %d times, want 1: the fault must not cost the connection", got)
			}
			if got := h.metric(t, "warren_connected"); got != 1 {
				t.Errorf("warren_connected = %v, want 1", got)
			}
			if tt.needCtl {
				if got := brokertest.Connections(t, h.name); got != 1 {
					t.Errorf("broker sees %d connections named %q, want 1", got, h.name)
				}
			}
		})
	}
}

func TestSettlementOnDeadChannelIsDropped(t *testing.T) {
	for _, tt := range []struct {
		name   string
		result error // of the handler whose channel died
	}{
		{name: "handled"},
		// A retry copy now would be a duplicate: the broker redelivered
		// the original already.
		{name: "failed", result: errors.New("transient")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			brokertest.NeedCtl(t)
			q := brokertest.Queue(t)
			started := make(chan struct{})
			release := make(chan struct{})
			var releaseOnce sync.Once
			t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
			var redelivered atomic.Bool
			rec := newRecorder(func(_ context.Context, m *worker.Message, attempt int) error {
				if string(m.Body) != "held" {
					return nil
				}
				if attempt == 1 {
					close(started)
					<-release // still running when its channel dies
					return tt.result
				}
				redelivered.Store(m.Redelivered)
				return nil
			})
			h := start(t, worker.Config{
				Topology:    broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Minute}},
				Handler:     rec,
				Concurrency: 2,
			})
			h.waitReady(t)
			brokertest.Publish(t, q, "held")
			<-started
			if n := brokertest.FailChannels(t, h.name); n != 1 {
				t.Fatalf("broker failed %d channels, want 1", n)
			}
			// The broker requeued the message with its channel; the new channel
			// delivers it again while the first handler still runs.
			brokertest.WaitFor(t, 10*time.Second, "the message redelivered and acked", func() bool {
				return rec.count("held") == 2 && h.metric(t, "warren_messages_total", "outcome", "ack") == 1
			})
			if !redelivered.Load() {
				t.Error("second delivery lacks the redelivered flag")
			}
			releaseOnce.Do(func() { close(release) })
			brokertest.WaitFor(t, 10*time.Second, "the first handler's settlement dropped", func() bool {
				return h.metric(t, "warren_stale_settlements_total") == 1
			})
			if n := brokertest.Ready(t, q+".retry.1m"); n != 0 {
				t.Errorf("%s holds %d copies, want 0", q+".retry.1m", n)
			}
			// Acking the old tag on the new channel would be a second channel error.
			brokertest.Publish(t, q, "next")
			brokertest.WaitFor(t, 10*time.Second, "next message", func() bool { return rec.count("next") == 1 })
			if got := h.metric(t, "warren_reconnects_total"); got != 1 {
				t.Errorf("warren_reconnects_total = %v, want 1: only the injected channel error", got)
			}
			if err := h.stop(t); err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			if n := brokertest.Ready(t, q); n != 0 {
				t.Errorf("queue holds %d messages, want 0", n)
			}
			if n := rec.count("held"); n != 2 {
				t.Errorf("handled %d times, want 2 (once more after the channel died)", n)
			}
		})
	}
}

func TestHeartbeatDetectsStalledLink(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{proxy.URL()}, Heartbeat: time.Second},
		Topology: topology(q),
		Handler:  handler.Noop(),
	})
	h.waitReady(t)
	proxy.Stall(true) // the link stays open and carries nothing
	brokertest.WaitFor(t, 10*time.Second, "the dead link noticed", func() bool {
		return h.w.Ready() != nil && h.metric(t, "warren_connected") == 0
	})
	proxy.Stall(false)
	h.waitReady(t)
	if got := h.metric(t, "warren_reconnects_total"); got != 1 {
		t.Errorf("warren_reconnects_total = %v, want 1", got)
	}
}

func TestDrainSettlesInFlightAndHandsBackTheRest(t *testing.T) {
	q := brokertest.Queue(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	var running atomic.Int32
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
		running.Add(1)
		<-release // finishes only when the test says so, even after the drain began
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 10, Concurrency: 3, ShutdownTimeout: 30 * time.Second})
	h.waitReady(t)
	brokertest.Publish(t, q, brokertest.Bodies("m", 20)...)
	brokertest.WaitFor(t, 10*time.Second, "3 handlers running", func() bool { return running.Load() == 3 })

	h.cancel()
	brokertest.WaitFor(t, 5*time.Second, "not ready while draining", func() bool {
		err := h.w.Ready()
		return err != nil && strings.Contains(err.Error(), "draining")
	})
	// Prefetched messages that never reached a handler go back at once,
	// while the handlers still run.
	brokertest.WaitFor(t, 10*time.Second, "untried messages back in the queue", func() bool {
		return brokertest.Ready(t, q) == 17
	})
	if got := h.metric(t, "warren_messages_total", "outcome", "requeue"); got < 7 {
		t.Errorf("requeued %v messages, want at least the 7 prefetched", got)
	}
	releaseOnce.Do(func() { close(release) })
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got := h.metric(t, "warren_messages_total", "outcome", "ack"); got != 3 {
		t.Errorf("acked %v messages, want the 3 that were in flight", got)
	}
	if got := rec.calls(); got != 3 {
		t.Errorf("handler called %d times, want 3: no new message after the drain began", got)
	}
	if got := brokertest.Ready(t, q); got != 17 {
		t.Errorf("queue holds %d messages, want the 17 not handled", got)
	}
}

func TestShutdownTimeoutHandsBackUnfinished(t *testing.T) {
	q := brokertest.Queue(t)
	var running atomic.Int32
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
		running.Add(1)
		<-ctx.Done() // a handler that would run far longer than the drain allows
		return ctx.Err()
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 4, Concurrency: 2,
		HandlerTimeout: time.Hour, ShutdownTimeout: 300 * time.Millisecond})
	h.waitReady(t)
	brokertest.Publish(t, q, brokertest.Bodies("m", 5)...)
	brokertest.WaitFor(t, 10*time.Second, "2 handlers running", func() bool { return running.Load() == 2 })

	begin := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("stop took %s with a shutdown timeout of 300ms", d)
	}
	if got := h.metric(t, "warren_messages_total", "outcome", "ack"); got != 0 {
		t.Errorf("acked %v messages whose handler never finished, want 0", got)
	}
	if got := brokertest.Ready(t, q); got != 5 {
		t.Errorf("queue holds %d messages, want all 5 handed back", got)
	}
}

func TestPanickingHandlerDoesNotStopWorker(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(func(_ context.Context, m *worker.Message, attempt int) error {
		if string(m.Body) == "boom" && attempt == 1 {
			panic("handler bug")
		}
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec})
	h.waitReady(t)
	bodies := append(brokertest.Bodies("m", 20), "boom")
	brokertest.Publish(t, q, bodies...)
	brokertest.WaitFor(t, 20*time.Second, "every message handled, boom twice", func() bool {
		return rec.distinct() == len(bodies) && rec.count("boom") == 2
	})
	brokertest.WaitFor(t, 10*time.Second, "all acked", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
	})
	if got := h.metric(t, "warren_messages_total", "outcome", "retry"); got != 1 {
		t.Errorf("retries = %v, want 1 (the panic)", got)
	}
	if got := h.logs.FilterMessage("handler panicked").Len(); got != 1 {
		t.Errorf("logged %d panics, want 1", got)
	}
	if err := h.w.Ready(); err != nil {
		t.Errorf("Ready() = %v after a panic, want nil", err)
	}
}

func TestHandlerTimeoutRetries(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, attempt int) error {
		if attempt == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, HandlerTimeout: 200 * time.Millisecond})
	h.waitReady(t)
	brokertest.Publish(t, q, "slow")
	brokertest.WaitFor(t, 10*time.Second, "a retry, then the second attempt acked", func() bool {
		return rec.count("slow") == 2 && h.metric(t, "warren_messages_total", "outcome", "ack") == 1 &&
			h.metric(t, "warren_messages_total", "outcome", "retry") == 1
	})
}

func TestPrefetchBoundsUnackedMessages(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	release := make(chan struct{})
	var running atomic.Int32
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
		running.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 7, Concurrency: 2})
	h.waitReady(t)
	brokertest.Publish(t, q, brokertest.Bodies("m", 100)...)
	brokertest.WaitFor(t, 10*time.Second, "2 handlers running", func() bool { return running.Load() == 2 })
	var ready, unacked int
	brokertest.WaitFor(t, 20*time.Second, "the broker to hold back all but the prefetch", func() bool {
		ready, unacked, _ = brokertest.Counts(t, q)
		return ready+unacked == 100 && unacked == 7
	})
	if got := rec.calls(); got != 2 {
		t.Errorf("handler called %d times, want 2 (concurrency)", got)
	}
	close(release)
	brokertest.WaitFor(t, 20*time.Second, "all handled", func() bool { return rec.distinct() == 100 })
}

func TestReadyFollowsConnection(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	proxy.Refuse(true)
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{proxy.URL()}},
		Topology: topology(q),
		Handler:  handler.Noop(),
	})
	brokertest.WaitFor(t, 10*time.Second, "not ready while the broker is unreachable", func() bool {
		err := h.w.Ready()
		return err != nil && strings.Contains(err.Error(), "connecting")
	})
	if err := h.w.Alive(); err != nil {
		t.Errorf("Alive() = %v with the broker unreachable, want nil: liveness must not depend on the broker", err)
	}
	proxy.Refuse(false)
	h.waitReady(t)
	if got := h.metric(t, "warren_connected"); got != 1 {
		t.Errorf("warren_connected = %v, want 1", got)
	}

	proxy.Refuse(true)
	proxy.Cut()
	brokertest.WaitFor(t, 10*time.Second, "not ready after the link is cut", func() bool {
		return h.w.Ready() != nil && h.metric(t, "warren_connected") == 0
	})
	proxy.Refuse(false)
	h.waitReady(t)
}

func TestRefusedTopologyIsReportedOnceAndRetried(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: broker.Quorum})
	h := start(t, worker.Config{Topology: topology(q), Handler: handler.Noop()})

	brokertest.WaitFor(t, 10*time.Second, "not ready with the reason", func() bool {
		err := h.w.Ready()
		return err != nil && strings.Contains(err.Error(), "x-queue-type") && strings.Contains(err.Error(), q)
	})
	// Let the worker try a few times: it must back off, and say it once.
	attempts := func() []observer.LoggedEntry {
		return h.logs.FilterMessageSnippet("channel closed, opening a new one").All()
	}
	brokertest.WaitFor(t, 20*time.Second, "4 attempts", func() bool { return len(attempts()) >= 4 })
	// Backoff waits at least 100, 200 and 400 ms between them (half of
	// each step, the rest is jitter); a hot loop would take microseconds.
	if a := attempts(); a[3].Time.Sub(a[0].Time) < 700*time.Millisecond {
		t.Errorf("4 attempts within %s, want backoff of at least 700ms", a[3].Time.Sub(a[0].Time))
	}
	if n := h.logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
		t.Errorf("logged %d errors for one refused declaration, want 1", n)
	}
	if got := h.dialer.dials.Load(); got != 1 {
		t.Errorf("worker dialed %d times, want 1: a refused declaration is a channel error", got)
	}

	brokertest.DeleteQueues(t, q)
	h.waitReady(t)
}

func TestPassiveDeclareWaitsForQueue(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(nil)
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: false}, Handler: rec})
	for _, name := range []string{q, q + ".dead"} { // Q first: it is declared first
		brokertest.WaitFor(t, 10*time.Second, "not ready while "+name+" is missing", func() bool {
			err := h.w.Ready()
			return err != nil && strings.Contains(err.Error(), "NOT_FOUND") && strings.Contains(err.Error(), name)
		})
		brokertest.DeclareQueue(t, name, nil) // as a plain client would: no arguments
	}
	h.waitReady(t)
	brokertest.Publish(t, q, "hello")
	brokertest.WaitFor(t, 10*time.Second, "message handled", func() bool { return rec.count("hello") == 1 })
}

func TestExchangeBindings(t *testing.T) {
	for _, tt := range []struct {
		kind      string
		keys      []string
		publishTo string // routing key of the message that must arrive
		skip      string // routing key of a message that must not
		headers   amqp.Table
	}{
		{kind: "direct", publishTo: "", skip: "other"}, // default key: the queue name, set below
		{kind: "direct", keys: []string{"a", "b"}, publishTo: "b", skip: "c"},
		{kind: "topic", keys: []string{"orders.*.created"}, publishTo: "orders.eu.created", skip: "orders.eu.deleted"},
		{kind: "fanout", publishTo: "anything"},
		{kind: "headers", keys: []string{"type=report", "format=pdf"}, publishTo: "any",
			headers: amqp.Table{"type": "report", "format": "pdf"}},
	} {
		t.Run(tt.kind+"-"+strings.Join(tt.keys, ","), func(t *testing.T) {
			q := brokertest.Queue(t)
			ex := q + ".ex"
			t.Cleanup(func() { brokertest.Channel(t).ExchangeDelete(ex, false, false) })
			rec := newRecorder(nil)
			h := start(t, worker.Config{
				Topology: broker.Topology{Queue: q, Declare: true, Exchange: ex, ExchangeType: tt.kind, BindingKeys: tt.keys},
				Handler:  rec,
			})
			h.waitReady(t)
			key := tt.publishTo
			if key == "" {
				key = q
			}
			if tt.skip != "" {
				brokertest.PublishTo(t, ex, tt.skip, "skipped")
			}
			if tt.headers != nil {
				// Only a message with every header bound reaches the queue.
				publishHeaders(t, ex, amqp.Table{"type": "report"}, "skipped")
				publishHeaders(t, ex, tt.headers, "routed")
			} else {
				brokertest.PublishTo(t, ex, key, "routed")
			}
			brokertest.WaitFor(t, 10*time.Second, "routed message", func() bool { return rec.count("routed") == 1 })
			if got := rec.count("skipped"); got != 0 {
				t.Errorf("message with key %q reached the queue, want it unrouted", tt.skip)
			}
		})
	}
}

func publishHeaders(t *testing.T, exchange string, headers amqp.Table, body string) {
	t.Helper()
	publishHeadersTo(t, exchange, "", headers, body)
}

// publishHeadersTo publishes body with headers to exchange with key, and
// waits for the broker's confirm.
func publishHeadersTo(t *testing.T, exchange, key string, headers amqp.Table, body string) {
	t.Helper()
	ch := brokertest.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), exchange, key, false, false,
		amqp.Publishing{Headers: headers, Body: []byte(body), DeliveryMode: amqp.Persistent})
	if err != nil || !dc.Wait() {
		t.Fatalf("publish with headers: %v", err)
	}
}

func TestNewRejectsIncompleteConfig(t *testing.T) {
	d := &broker.Dialer{URLs: []string{brokertest.URL()}}
	for _, tt := range []struct {
		name string
		give worker.Config
		want string
	}{
		{"no dialer", worker.Config{Topology: topology("q"), Handler: handler.Noop(), Logger: zap.NewNop()}, "Dialer"},
		{"no queue", worker.Config{Dialer: d, Handler: handler.Noop(), Logger: zap.NewNop()}, "queue"},
		{"no handler", worker.Config{Dialer: d, Topology: topology("q"), Logger: zap.NewNop()}, "Handler"},
		{"no logger", worker.Config{Dialer: d, Topology: topology("q"), Handler: handler.Noop()}, "Logger"},
		{"prefetch too big", worker.Config{Dialer: d, Topology: topology("q"), Handler: handler.Noop(), Logger: zap.NewNop(), Prefetch: 70000}, "prefetch"},
		{"rate limit negative", worker.Config{Dialer: d, Topology: topology("q"), Handler: handler.Noop(), Logger: zap.NewNop(), RateLimit: -1}, "rate limit"},
		{"rate limit NaN", worker.Config{Dialer: d, Topology: topology("q"), Handler: handler.Noop(), Logger: zap.NewNop(), RateLimit: math.NaN()}, "rate limit"},
		{"rate limit infinite", worker.Config{Dialer: d, Topology: topology("q"), Handler: handler.Noop(), Logger: zap.NewNop(), RateLimit: math.Inf(1)}, "rate limit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := worker.New(tt.give)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%s) = %v, want an error naming %q", tt.name, err, tt.want)
			}
		})
	}
}

func ExampleHandlerFunc() {
	resize := worker.HandlerFunc(func(ctx context.Context, m *worker.Message) error {
		if len(m.Body) == 0 {
			return worker.Permanent(errors.New("empty image")) // no retry can fix it
		}
		// ... do the work, honouring ctx ...
		return nil
	})
	w, err := worker.New(worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{"amqp://guest:guest@localhost:5672/"}},
		Topology: broker.Topology{Queue: "images", Declare: true},
		Handler:  resize,
		Logger:   zap.NewNop(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = w // run it with w.Run(ctx) until ctx is cancelled
	fmt.Println("ready to run")
	// Output: ready to run
}

// TestFailsOverToAnotherNode runs a worker on two "nodes" (two proxies to
// the test broker): when the node it is on goes away, it moves to the
// other one, and warren_broker_info names the node it is on, host:port,
// with no user or password.
func TestFailsOverToAnotherNode(t *testing.T) {
	q := brokertest.Queue(t)
	nodes := []*brokertest.Proxy{brokertest.NewProxy(t), brokertest.NewProxy(t)}
	addr := func(p *brokertest.Proxy) string {
		u, err := url.Parse(p.URL())
		if err != nil {
			t.Fatal(err)
		}
		return u.Host
	}
	rec := newRecorder(nil)
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{nodes[0].URL(), nodes[1].URL()}, Name: brokertest.Name(t)},
		Topology: topology(q), Handler: rec,
	})
	h.waitReady(t)
	on := func() int {
		for i, p := range nodes {
			if h.metric(t, "warren_broker_info", "node", addr(p)) == 1 {
				return i
			}
		}
		return -1
	}
	first := on()
	if first < 0 {
		t.Fatalf("warren_broker_info names neither %s nor %s", addr(nodes[0]), addr(nodes[1]))
	}
	brokertest.Publish(t, q, "before")
	brokertest.WaitFor(t, 10*time.Second, "first message handled", func() bool { return rec.count("before") == 1 })

	// The node dies: its links are cut and it refuses new ones.
	cut := time.Now()
	nodes[first].Refuse(true)
	nodes[first].Cut()
	other := 1 - first
	brokertest.WaitFor(t, 10*time.Second, "worker on the other node", func() bool {
		return on() == other && h.w.Ready() == nil
	})
	t.Logf("moved from %s to %s in %s", addr(nodes[first]), addr(nodes[other]), time.Since(cut).Round(time.Millisecond))
	if got := h.metric(t, "warren_broker_info", "node", addr(nodes[first])); got != 0 {
		t.Errorf("warren_broker_info{node=%q} = %v after the move, want 0 or no series", addr(nodes[first]), got)
	}
	brokertest.Publish(t, q, "after")
	brokertest.WaitFor(t, 10*time.Second, "message handled on the other node", func() bool { return rec.count("after") == 1 })

	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "warren_broker_info" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "guest") || strings.Contains(l.GetValue(), "@") {
					t.Errorf("warren_broker_info label %s=%q holds credentials", l.GetName(), l.GetValue())
				}
			}
		}
	}
}
