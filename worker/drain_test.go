package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// TestMemoryAlarmBlocksOnlyCopies raises a memory alarm on a node of the
// test's own while a handler fails: the retry copies that go out during
// the alarm get their connection blocked by the broker, and that must
// neither stop the acks of the messages that succeed nor hold the drain.
func TestMemoryAlarmBlocksOnlyCopies(t *testing.T) {
	node := brokertest.StartNode(t)
	q := brokertest.Name(t)
	name := brokertest.Name(t)
	const (
		failing    = 2
		succeeding = 100
		shutdown   = 5 * time.Second
	)
	// Each batch of handlers runs only once the alarm is on.
	first, late := make(chan struct{}), make(chan struct{})
	rec := newRecorder(func(ctx context.Context, m *worker.Message, _ int) error {
		gate := first
		if strings.HasPrefix(string(m.Body), "late") {
			gate = late
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !strings.HasPrefix(string(m.Body), "ok") {
			return errors.New("transient")
		}
		return nil
	})
	topo := broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Hour}}
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{node.URL()}, Name: name},
		Topology: topo, Handler: rec, Prefetch: 16, Concurrency: 4, ShutdownTimeout: shutdown,
	})
	h.waitReady(t)

	ch, err := brokertest.DialTo(t, node.URL()).Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	bodies := append(brokertest.Bodies("fail", failing), brokertest.Bodies("ok", succeeding)...)
	brokertest.PublishOn(t, ch, "", q, bodies...)

	alarmOn := false
	alarm := func(on bool) {
		if on == alarmOn {
			return
		}
		watermark := "0.4"
		if on {
			watermark = "0.000001"
		}
		node.Ctl(t, "set_vm_memory_high_watermark", watermark)
		brokertest.WaitFor(t, 30*time.Second, fmt.Sprintf("the memory alarm on: %v", on), func() bool {
			return strings.Contains(node.Ctl(t, "eval", "rabbit_alarm:get_alarms()."), "memory") == on
		})
		alarmOn = on
	}
	t.Cleanup(func() { alarm(false) })
	blockedLogs := func(msg string) int { return h.logs.FilterMessage(msg).Len() }
	alarm(true)
	close(first)

	// (a) The messages that succeed are acked on the consuming connection
	// while the copies wait: the queue empties but for the failing ones.
	handled := func() int {
		n := 0
		for _, b := range brokertest.Bodies("ok", succeeding) {
			if rec.count(b) > 0 {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for handled() < succeeding || node.Messages(t)[q] > failing {
		if time.Now().After(deadline) {
			t.Fatalf("during the alarm: %d of %d messages handled, %d still in %s (want at most the %d failing ones); connections:\n%s",
				handled(), succeeding, node.Messages(t)[q], q, failing, node.Ctl(t, "list_connections", "name", "state"))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// (b) The blocked copies' connection is shown, and shown no more once
	// the alarm clears; the copies then go out.
	brokertest.WaitFor(t, 10*time.Second, "warren_blocked = 1", func() bool {
		return h.metric(t, "warren_blocked") == 1
	})
	if err := h.w.Ready(); err == nil || !strings.Contains(err.Error(), "broker blocked publishing: low on memory") {
		t.Errorf("Ready() = %v during the alarm, want the reason: broker blocked publishing: low on memory", err)
	}
	if n := blockedLogs("broker blocked a connection of warren's"); n != 1 {
		t.Errorf("logged the block %d times, want once", n)
	}
	t.Logf("connections during the alarm:\n%s", node.Ctl(t, "list_connections", "name", "state"))
	alarm(false)
	brokertest.WaitFor(t, 20*time.Second, "unblocked, ready, the failed messages in the retry queue", func() bool {
		return h.metric(t, "warren_blocked") == 0 && h.w.Ready() == nil &&
			node.Messages(t)[topo.RetryQueue(time.Hour)] == failing && node.Messages(t)[q] == 0
	})
	if n := blockedLogs("broker unblocked a connection of warren's"); n != 1 {
		t.Errorf("logged the unblock %d times, want once", n)
	}

	// (c) The drain ends in time though the copies' connection is blocked
	// again, with a copy waiting on it.
	brokertest.PublishOn(t, ch, "", q, "late-fail")
	alarm(true)
	close(late)
	brokertest.WaitFor(t, 20*time.Second, "warren_blocked = 1 again", func() bool {
		return h.metric(t, "warren_blocked") == 1 && h.metric(t, "warren_inflight_messages") == 1
	})
	begin := time.Now()
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	d := time.Since(begin)
	t.Logf("Run returned %s after cancel, shutdown timeout %s", d.Round(time.Millisecond), shutdown)
	if d > shutdown+5*time.Second {
		t.Errorf("Run returned %s after cancel, want within the shutdown timeout %s plus 5s", d.Round(time.Millisecond), shutdown)
	}
	alarm(false)

	// Nothing lost: every message was handled, or is in a queue of warren's.
	seen := make(map[string]bool)
	for _, b := range bodies {
		if strings.HasPrefix(b, "ok") && rec.count(b) > 0 {
			seen[b] = true
		}
	}
	for _, queue := range []string{q, topo.RetryQueue(time.Hour), topo.DeadQueue()} {
		for _, d := range brokertest.GetOn(t, ch, queue, -1) {
			seen[string(d.Body)] = true
		}
	}
	for _, b := range append(bodies, "late-fail") {
		if !seen[b] {
			t.Errorf("message %q lost: not handled and in none of warren's queues", b)
		}
	}
}

// TestDrainIsBoundedWhenAHandlerNeverReturns runs a handler that ignores
// its context: Run must still return within DrainBound of the shutdown
// timeout, with the connection closed, so that the message goes back to
// the queue instead of waiting for an ack that never comes.
func TestDrainIsBoundedWhenAHandlerNeverReturns(t *testing.T) {
	q := brokertest.Queue(t)
	const shutdown = time.Second
	release := make(chan struct{})
	var running atomic.Int32
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		running.Add(1)
		<-release // deaf to its context
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 2, Concurrency: 1,
		HandlerTimeout: time.Hour, ShutdownTimeout: shutdown})
	t.Cleanup(func() { close(release) }) // before the harness stops: the goroutine ends
	h.waitReady(t)
	brokertest.Publish(t, q, "stuck", "waiting")
	brokertest.WaitFor(t, 10*time.Second, "the handler running", func() bool { return running.Load() == 1 })

	h.stopWithinDrainBound(t, shutdown)
	brokertest.WaitFor(t, 5*time.Second, "warren's connections closed", func() bool {
		return brokertest.Connections(t, h.name) == 0
	})
	brokertest.WaitFor(t, 5*time.Second, "both messages back in the queue", func() bool {
		return brokertest.Ready(t, q) == 2
	})
	if got := h.metric(t, "warren_messages_total", "outcome", "ack"); got != 0 {
		t.Errorf("acked %v messages, want 0: the stuck one never finished", got)
	}
}

// TestDrainIsBoundedOnAStalledLink stops the worker while its link to the
// broker carries nothing, before the heartbeat notices: cancelling the
// consumer gets no answer, and the drain must not wait for one.
func TestDrainIsBoundedOnAStalledLink(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	const shutdown = time.Second
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{proxy.URL()}, Heartbeat: 10 * time.Second},
		Topology: topology(q), Handler: handler.Noop(), ShutdownTimeout: shutdown,
	})
	h.waitReady(t)
	proxy.Stall(true)
	t.Cleanup(func() { proxy.Stall(false) })

	h.stopWithinDrainBound(t, shutdown)
}

// stopWithinDrainBound cancels the worker and fails the test unless Run
// returns nil within DrainBound(shutdown), give or take 2s of the
// machine's noise.
func (h *harness) stopWithinDrainBound(t *testing.T, shutdown time.Duration) {
	t.Helper()
	bound := worker.DrainBound(shutdown)
	begin := time.Now()
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		close(h.done)
	case <-time.After(bound + 2*time.Second):
		t.Fatalf("Run still running %s after cancel, want it back within DrainBound(%s) = %s", time.Since(begin).Round(time.Millisecond), shutdown, bound)
	}
	t.Logf("Run returned %s after cancel; DrainBound(%s) = %s", time.Since(begin).Round(time.Millisecond), shutdown, bound)
}
