package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// circuitConfig opens after 3 downstream-down failures in 10 s and probes
// at 100 ms, then at most every 400 ms.
var circuitConfig = worker.CircuitConfig{Failures: 3, Window: 10 * time.Second, MaxProbeInterval: 400 * time.Millisecond}

// downstream returns a recorder whose handler fails with
// worker.Unavailable while down is set, as it is at first.
func downstream() (*recorder, *atomic.Bool) {
	down := new(atomic.Bool)
	down.Store(true)
	return newRecorder(func(context.Context, *worker.Message, int) error {
		if down.Load() {
			return worker.Unavailable(errors.New("connection refused"))
		}
		return nil
	}), down
}

// TestCircuitOpensAndCloses: a Go handler whose downstream is down
// (worker.Unavailable) opens the circuit after the threshold: the handler
// is called no more than the threshold, the messages that were in flight
// and the probes; the messages wait in the queue, none is dead and only
// those that failed before it opened went to a retry queue; /readyz says
// why; the metrics say so. Once the downstream is back, a probe closes
// it and every message is handled, none past its second attempt.
// Without the circuit (TestCircuitStaysClosed/circuit_off) they all die.
func TestCircuitOpensAndCloses(t *testing.T) {
	q := brokertest.Queue(t)
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	attempts := map[string]int{} // the highest attempt seen, by body
	rec := newRecorder(func(_ context.Context, m *worker.Message, _ int) error {
		mu.Lock()
		attempts[string(m.Body)] = max(attempts[string(m.Body)], m.Attempt)
		mu.Unlock()
		if down.Load() {
			return worker.Unavailable(errors.New("connection refused"))
		}
		return nil
	})
	const concurrency = 2
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Second}},
		Handler: rec, Concurrency: concurrency, Circuit: circuitConfig})
	h.waitReady(t)
	bodies := brokertest.Bodies("m", 30)
	brokertest.Publish(t, q, bodies...)

	brokertest.WaitFor(t, 10*time.Second, "the circuit open", func() bool { return h.metric(t, "warren_circuit_open") == 1 })
	if err := h.w.Ready(); err == nil || !strings.HasPrefix(err.Error(), "circuit open: ") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Ready() = %v, want circuit open: connection refused", err)
	}
	// A few probes go by, and the retried ones come back from their queue.
	brokertest.WaitFor(t, 10*time.Second, "three probes", func() bool {
		return h.logs.FilterMessageSnippet("circuit half-open").Len() >= 3
	})
	time.Sleep(1500 * time.Millisecond) // the 1 s retry queue gives back what it holds
	probes := h.logs.FilterMessageSnippet("circuit half-open").Len()
	calls := rec.calls()
	if limit := circuitConfig.Failures + concurrency + probes; calls > limit {
		t.Errorf("handler called %d times while down, want at most %d (threshold %d + in flight %d + probes %d)",
			calls, limit, circuitConfig.Failures, concurrency, probes)
	}
	if n := h.metric(t, "warren_messages_total", "outcome", "retry"); n >= float64(circuitConfig.Failures) {
		t.Errorf("%v messages retried, want fewer than the threshold %d: the rest are handed back untried", n, circuitConfig.Failures)
	}
	if n := h.metric(t, "warren_messages_total", "outcome", "dead"); n != 0 {
		t.Errorf("%v messages dead while the circuit is open, want 0", n)
	}
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages, want 0", q+".dead", n)
	}
	if n := brokertest.Ready(t, q); n < len(bodies)-2 {
		t.Errorf("%s holds %d ready messages while the circuit is open, want at least %d", q, n, len(bodies)-2)
	}
	t.Logf("while down: %d handler calls, %d probes, %d messages waiting", calls, probes, brokertest.Ready(t, q))

	down.Store(false)
	brokertest.WaitFor(t, 10*time.Second, "every message handled", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
	})
	if m := rec.missing(bodies); len(m) > 0 {
		t.Errorf("never handled: %v", m)
	}
	// A probe that fails hands its message back untried: the same one
	// may be probed many times, and is still on its first attempt.
	mu.Lock()
	for _, b := range bodies {
		if n := attempts[b]; n > 2 {
			t.Errorf("%s reached attempt %d, want at most 2 (a failure before the circuit opened, then the success)", b, n)
		}
	}
	mu.Unlock()
	if got := h.metric(t, "warren_circuit_open"); got != 0 {
		t.Errorf("warren_circuit_open = %v after recovery, want 0", got)
	}
	if got := h.metric(t, "warren_circuit_openings_total"); got != 1 {
		t.Errorf("warren_circuit_openings_total = %v, want 1", got)
	}
	if err := h.w.Ready(); err != nil {
		t.Errorf("Ready() = %v after recovery, want nil", err)
	}
	for _, msg := range []string{"circuit open", "circuit half-open", "circuit closed"} {
		if h.logs.FilterMessageSnippet(msg).Len() == 0 {
			t.Errorf("no log line %q", msg)
		}
	}
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages, want 0", q+".dead", n)
	}
}

// TestCircuitStaysClosed: failures that do not say the downstream is down
// (a Permanent verdict on one message, a plain error) never open the
// circuit, and with the circuit off even Unavailable ones go their usual
// way: every message is dead after its one attempt.
func TestCircuitStaysClosed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		give    error
		circuit worker.CircuitConfig
	}{
		{"permanent", worker.Permanent(errors.New("422 bad message")), circuitConfig},
		{"permanent and unavailable", worker.Permanent(worker.Unavailable(errors.New("bad"))), circuitConfig},
		{"plain error", errors.New("exit status 1"), circuitConfig},
		{"circuit off", worker.Unavailable(errors.New("connection refused")), worker.CircuitConfig{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			rec := newRecorder(func(context.Context, *worker.Message, int) error { return tt.give })
			h := start(t, worker.Config{Topology: topology(q), Handler: rec, MaxAttempts: 1, Circuit: tt.circuit})
			h.waitReady(t)
			bodies := brokertest.Bodies("m", 10)
			brokertest.Publish(t, q, bodies...)
			brokertest.WaitFor(t, 10*time.Second, "every message dead", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "dead") == float64(len(bodies))
			})
			if got := h.metric(t, "warren_circuit_openings_total"); got != 0 {
				t.Errorf("warren_circuit_openings_total = %v, want 0", got)
			}
			if err := h.w.Ready(); err != nil {
				t.Errorf("Ready() = %v, want nil", err)
			}
		})
	}
}

// TestCircuitOpenDrainsAtOnce: a shutdown while the circuit is open, the
// worker waiting to probe, returns at once and leaves every message in
// the queue.
func TestCircuitOpenDrainsAtOnce(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		return worker.Unavailable(errors.New("503"))
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Concurrency: 1,
		Circuit: worker.CircuitConfig{Failures: 1, MaxProbeInterval: time.Minute}})
	h.waitReady(t)
	brokertest.Publish(t, q, brokertest.Bodies("m", 5)...)
	brokertest.WaitFor(t, 10*time.Second, "the circuit open", func() bool { return h.metric(t, "warren_circuit_open") == 1 })
	// The first probe comes after a second: stop before it, and after.
	start := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stopping with the circuit open took %s, want under 2s", d)
	}
	if n := brokertest.Ready(t, q); n != 5 {
		t.Errorf("%s holds %d messages after the stop, want all 5", q, n)
	}
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages, want 0", q+".dead", n)
	}
}

// TestCircuitOutageKeepsTheDeliveryLimit: on a quorum queue with a
// delivery limit, every message handed back counts a delivery, so a
// long outage's probes (and the messages held when the circuit opened)
// would use it up and the broker would dead-letter them: an outage that
// dead-letters after all. What the circuit hands back goes to the tail of
// the queue as a confirmed copy, untried, its count of deliveries new:
// more probes than the limit, and nothing dead.
// With a rate limit, a slot waiting for its turn when the circuit opens
// hands its message back the same way.
func TestCircuitOutageKeepsTheDeliveryLimit(t *testing.T) {
	for _, rateLimit := range []float64{0, 5} {
		t.Run(fmt.Sprint("rate limit ", rateLimit), func(t *testing.T) {
			testOutageKeepsTheDeliveryLimit(t, rateLimit)
		})
	}
}

func testOutageKeepsTheDeliveryLimit(t *testing.T, rateLimit float64) {
	q := brokertest.Queue(t)
	rec, down := downstream()
	const limit = 2
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, QueueType: broker.Quorum, Declare: true, DeliveryLimit: limit, RetryDelays: []time.Duration{time.Second}},
		Handler:  rec, Concurrency: 2, Circuit: circuitConfig, RateLimit: rateLimit})
	h.waitReady(t)
	bodies := brokertest.Bodies("m", 10)
	brokertest.Publish(t, q, bodies...)
	brokertest.WaitFor(t, 10*time.Second, "the circuit open", func() bool { return h.metric(t, "warren_circuit_open") == 1 })
	// Three times the limit: a message probed again and again from the
	// head of the queue would be over it.
	brokertest.WaitFor(t, 20*time.Second, "probes past the delivery limit", func() bool {
		return h.logs.FilterMessageSnippet("circuit half-open").Len() >= 3*limit
	})
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages during the outage, want 0", q+".dead", n)
	}
	down.Store(false)
	brokertest.WaitFor(t, 20*time.Second, "every message handled", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == float64(len(bodies))
	})
	if m := rec.missing(bodies); len(m) > 0 {
		t.Errorf("never handled: %v", m)
	}
	if n := brokertest.Ready(t, q+".dead"); n != 0 {
		t.Errorf("%s holds %d messages, want 0: the outage used up their delivery limit", q+".dead", n)
	}
	if n := h.metric(t, "warren_messages_total", "outcome", "dead"); n != 0 {
		t.Errorf("%v messages dead, want 0", n)
	}
	// Each failed probe handed its message back as a copy: more of them
	// than the limit.
	if n := h.metric(t, "warren_handback_publishes_total", "result", "confirmed"); n <= limit {
		t.Errorf("warren_handback_publishes_total{result=confirmed} = %v, want more than %d", n, limit)
	}
	// And nothing went back by a nack, which would count a delivery.
	if n, c := h.metric(t, "warren_messages_total", "outcome", "requeue"), h.metric(t, "warren_handback_publishes_total", "result", "confirmed"); n != c {
		t.Errorf("%v messages handed back, %v of them as copies: want all", n, c)
	}
}
