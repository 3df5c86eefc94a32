package worker_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zapcore"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

func TestBrokerCancelKeepsThePrefetchBound(t *testing.T) {
	q := brokertest.Queue(t)
	const prefetch = 4
	release := make(chan struct{})
	var held, most atomic.Int32
	rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
		n := held.Add(1)
		defer held.Add(-1)
		for old := most.Load(); n > old && !most.CompareAndSwap(old, n); old = most.Load() {
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: prefetch, Concurrency: 2 * prefetch})
	h.waitReady(t)
	brokertest.Publish(t, q, brokertest.Bodies("old", prefetch)...)
	brokertest.WaitFor(t, 10*time.Second, "the prefetch held by handlers", func() bool { return held.Load() == prefetch })

	// Deleting the queue cancels the consumer; the handlers still hold
	// its deliveries. The queue comes back, with messages.
	brokertest.DeleteQueues(t, q)
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: broker.Classic})
	brokertest.Publish(t, q, brokertest.Bodies("new", 2*prefetch)...)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && most.Load() <= prefetch {
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	brokertest.WaitFor(t, 20*time.Second, "every message handled", func() bool { return rec.distinct() == 3*prefetch })
	if got := most.Load(); got > prefetch {
		t.Errorf("handlers held %d messages at once after the broker cancelled the consumer, want at most the prefetch, %d", got, prefetch)
	}
}

func TestLastAttemptIsLoggedAsDead(t *testing.T) {
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology:    broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}},
		Handler:     worker.HandlerFunc(func(context.Context, *worker.Message) error { return errors.New("boom") }),
		MaxAttempts: 2,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "m")
	deadCopy(t, q)
	brokertest.WaitFor(t, 5*time.Second, "the dead message counted", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "dead") == 1
	})
	var outcomes []string
	for _, e := range h.logs.FilterMessage("handler failed").All() {
		outcomes = append(outcomes, e.ContextMap()["outcome"].(string))
	}
	if got := strings.Join(outcomes, " "); got != "retry dead" {
		t.Errorf("handler failures logged with outcomes %q, want %q", got, "retry dead")
	}
	dead := h.logs.FilterMessage("dead-lettered").All()
	if len(dead) != 1 {
		t.Fatalf("%d \"dead-lettered\" lines, want 1", len(dead))
	}
	f := dead[0].ContextMap()
	if dead[0].Level != zapcore.WarnLevel || f["message_id"] != "m" || f["attempts"] != int64(2) || !strings.Contains(f["reason"].(string), "boom") {
		t.Errorf("dead-lettered line = %s %v, want WARN with message_id m, attempts 2 and the reason", dead[0].Level, f)
	}
}

// TestShutdownAfterBrokerCancelDrains: a shutdown that begins while the
// consumer the broker cancelled still has deliveries in its handlers
// waits for them and sends their acks, as any drain does, instead of
// closing the channel under them.
func TestShutdownAfterBrokerCancelDrains(t *testing.T) {
	q := brokertest.Queue(t)
	release := make(chan struct{})
	var running atomic.Int32
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		running.Add(1)
		<-release // deaf to its context: only the test ends it
		return nil
	})
	h := start(t, worker.Config{Topology: topology(q), Handler: rec, Prefetch: 4, Concurrency: 2, ShutdownTimeout: 30 * time.Second})
	h.waitReady(t)
	brokertest.Publish(t, q, "a", "b")
	brokertest.WaitFor(t, 10*time.Second, "2 handlers running", func() bool { return running.Load() == 2 })

	brokertest.DeleteQueues(t, q) // the broker cancels the consumer
	brokertest.WaitFor(t, 10*time.Second, "the broker's cancel seen", func() bool {
		return h.logs.FilterMessage("consumer cancelled by the broker; declaring and consuming again once its deliveries are settled").Len() == 1
	})
	h.cancel()
	brokertest.WaitFor(t, 5*time.Second, "draining", func() bool {
		err := h.w.Ready()
		return err != nil && strings.Contains(err.Error(), "draining")
	})
	select {
	case err := <-h.done:
		t.Fatalf("Run returned %v while 2 handlers still held their messages", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := h.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got := h.logs.FilterMessage("drained").Len(); got != 1 {
		t.Errorf("logged \"drained\" %d times, want 1", got)
	}
	if got := h.metric(t, "warren_messages_total", "outcome", "ack"); got != 2 {
		t.Errorf("acked %v messages, want the 2 the handlers finished", got)
	}
	if got := h.metric(t, "warren_stale_settlements_total"); got != 0 {
		t.Errorf("%v settlements found their channel gone, want 0", got)
	}
}
