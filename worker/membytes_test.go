package worker_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// TestByteBudgetBoundsTheBodiesHeld: 4 MiB messages at a budget of 8 MiB,
// the prefetch adaptive. The first window, 4, is sent before warren has
// seen a body; the handlers hold the first two until the other two,
// beyond the budget, were handed back; the window shrinks to 2. Handlers never hold more than the budget at once, every
// message is handled once, and nothing is held at the end.
func TestByteBudgetBoundsTheBodiesHeld(t *testing.T) {
	const (
		size   = 4 << 20
		budget = 8 << 20
	)
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: broker.Classic})
	bodies := make([]string, 8)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("m%02d.", i) + strings.Repeat("x", size-4)
	}
	brokertest.Publish(t, q, bodies...)
	var held, most atomic.Int64
	release := make(chan struct{})
	rec := newRecorder(func(ctx context.Context, m *worker.Message, _ int) error {
		n := held.Add(int64(len(m.Body)))
		for old := most.Load(); n > old && !most.CompareAndSwap(old, n); old = most.Load() {
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		held.Add(-int64(len(m.Body)))
		return nil
	})
	h := start(t, worker.Config{Topology: broker.Topology{Queue: q, Declare: true}, Handler: rec, MaxInflightBytes: budget})
	brokertest.WaitFor(t, 30*time.Second, "the first window beyond the budget handed back", func() bool {
		// One more may come before the broker takes the cancel.
		return h.metric(t, "warren_messages_total", "outcome", "requeue") >= 2
	})
	if n := h.metric(t, "warren_inflight_bytes"); n != budget {
		t.Errorf("warren_inflight_bytes = %v while two messages are held, want %d", n, budget)
	}
	close(release)
	brokertest.WaitFor(t, 30*time.Second, "every message handled", func() bool { return rec.distinct() == len(bodies) })
	brokertest.WaitFor(t, 10*time.Second, "nothing held", func() bool { return h.metric(t, "warren_inflight_bytes") == 0 })

	if calls := rec.calls(); calls != len(bodies) {
		t.Errorf("handler called %d times for %d messages, want each once", calls, len(bodies))
	}
	if m := most.Load(); m > budget {
		t.Errorf("handlers held %d bytes at once, want at most the budget, %d", m, budget)
	}
	var windows []int64
	for _, e := range h.logs.FilterMessage("consuming").All() {
		windows = append(windows, e.ContextMap()["prefetch"].(int64))
	}
	if len(windows) < 2 || windows[0] != 4 || windows[len(windows)-1] != budget/size {
		t.Errorf("consumed with windows %v, want 4 first and %d last", windows, budget/size)
	}
	t.Logf("windows %v; %v deliveries handed back", windows, h.metric(t, "warren_messages_total", "outcome", "requeue"))
}
