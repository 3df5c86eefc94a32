package worker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// TestAdaptivePrefetchSwitchesUnderLoad runs a backlog through handlers
// that are fast, then slow, then fast again, with the prefetch unset: the
// window must grow, shrink and grow again, re-consuming each time, with
// every message handled exactly once and the broker's unacked count never
// above the window in force.
func TestAdaptivePrefetchSwitchesUnderLoad(t *testing.T) {
	brokertest.NeedCtl(t)
	for _, tt := range []struct {
		queueType string
		// stale is how old the broker's unacked count may be: a quorum
		// queue's is refreshed by its tick, a classic queue's is live.
		stale time.Duration
		// returns: a quorum queue hands back, redelivered, what it sent
		// to a consumer after the channel took its cancel.
		returns bool
	}{
		{broker.Classic, 0, false},
		{broker.Quorum, 6 * time.Second, true},
	} {
		t.Run(tt.queueType, func(t *testing.T) {
			q := brokertest.Queue(t)
			brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: tt.queueType})
			first := brokertest.Bodies("a", 20000)
			brokertest.Publish(t, q, first...)

			var mode sync.RWMutex // held for writing while handlers are to be slow
			slow := false
			rec := newRecorder(func(ctx context.Context, _ *worker.Message, _ int) error {
				mode.RLock()
				s := slow
				mode.RUnlock()
				if s {
					select {
					case <-time.After(20 * time.Millisecond):
					case <-ctx.Done():
					}
				}
				return nil
			})
			setSlow := func(v bool) {
				mode.Lock()
				slow = v
				mode.Unlock()
			}
			h := start(t, worker.Config{
				Topology:    broker.Topology{Queue: q, QueueType: tt.queueType, Declare: true},
				Handler:     rec,
				Concurrency: 4,
				MaxPrefetch: 300,
			})
			polls, polled := watchUnacked(t, q)
			window := func() int { return int(h.metric(t, "warren_prefetch")) }

			// From 4 (concurrency), 4x at least: what the noop
			// handler completes in a round trip, under the race detector
			// on a shared machine, is some 30.
			brokertest.WaitFor(t, 30*time.Second, "the window to grow for fast handlers", func() bool { return window() >= 20 })
			fastWindow := window()
			t.Logf("fast: window %d", fastWindow)
			setSlow(true)
			brokertest.WaitFor(t, 30*time.Second, "the window to shrink for slow handlers", func() bool { return window() <= fastWindow/2 })
			slowWindow := window()
			t.Logf("slow: window %d", slowWindow)
			setSlow(false)
			second := brokertest.Bodies("b", 20000)
			brokertest.Publish(t, q, second...)
			brokertest.WaitFor(t, 30*time.Second, "the window to grow again", func() bool { return window() >= max(2*slowWindow, 20) })
			t.Logf("fast again: window %d", window())
			all := slices.Concat(first, second)
			brokertest.WaitFor(t, 60*time.Second, "every message handled", func() bool { return rec.distinct() == len(all) })

			// Nothing lost, nothing doubled, nothing handed back.
			if missing := rec.missing(all); len(missing) > 0 {
				t.Errorf("%d messages never handled, such as %q", len(missing), missing[0])
			}
			rec.mu.Lock()
			calls, redelivered := rec.total, rec.redelivered
			rec.mu.Unlock()
			if calls != len(all) {
				t.Errorf("handler called %d times for %d messages, want each once", calls, len(all))
			}
			if requeued := h.metric(t, "warren_messages_total", "outcome", "requeue"); requeued != 0 {
				t.Errorf("%v messages handed back, want none", requeued)
			}
			t.Logf("%d messages redelivered by the broker", redelivered)
			if redelivered != 0 && !tt.returns {
				t.Errorf("%d messages redelivered, want none", redelivered)
			}

			// The window in force is the prefetch of the last "consuming"
			// line; the broker's count, polled at any time, is within it.
			var switches []windowAt
			for _, e := range h.logs.FilterMessage("consuming").All() {
				switches = append(switches, windowAt{at: e.Time, window: int(e.ContextMap()["prefetch"].(int64))})
			}
			if len(switches) < 4 || switches[0].window != 4 {
				t.Fatalf("consumed with windows %v, want 4 first, then at least 3 changes", switches)
			}
			if last := switches[len(switches)-1].window; last != window() {
				t.Errorf("last consuming line says prefetch %d, warren_prefetch says %d", last, window())
			}
			// Ten readings at least: rabbitmqctl, under the race detector
			// on a loaded machine, may answer every few seconds, and a
			// faster window leaves fewer during the work itself.
			brokertest.WaitFor(t, time.Minute, "10 polls of the broker's unacked count", func() bool { return polled() >= 10 })
			n, busy, worst := 0, 0, ""
			for _, p := range polls() {
				n++
				if p.unacked > 0 {
					busy++
				}
				allowed := inForce(switches, p.from.Add(-tt.stale), p.to)
				if p.unacked > allowed {
					worst = fmt.Sprintf("%d unacked at %s, window in force %d", p.unacked, p.to.Format("15:04:05.000"), allowed)
				}
			}
			t.Logf("%d switches, %d polls of the broker, %d with messages unacked", len(switches)-1, n, busy)
			if busy == 0 {
				t.Errorf("no poll of the broker saw a message unacked: the check proved nothing")
			}
			if worst != "" {
				t.Errorf("broker's unacked count above the window: %s", worst)
			}
		})
	}
}

// windowAt is the prefetch a consumer started with, and when.
type windowAt struct {
	at     time.Time
	window int
}

// inForce returns the largest window in force between from and to.
func inForce(switches []windowAt, from, to time.Time) int {
	most := 0
	for i, s := range switches {
		end := to.Add(time.Second) // the last one lasts
		if i+1 < len(switches) {
			end = switches[i+1].at
		}
		if s.at.Before(to.Add(100*time.Millisecond)) && end.After(from) {
			most = max(most, s.window)
		}
	}
	return most
}

// unackedPoll is one reading of a queue's unacked count, taken between
// from and to.
type unackedPoll struct {
	from, to time.Time
	unacked  int
}

// watchUnacked polls the unacked count of q as often as rabbitmqctl
// answers, until the returned function is called; that returns the
// readings.
func watchUnacked(t *testing.T, q string) (stop func() []unackedPoll, polled func() int) {
	done := make(chan struct{})
	finished := make(chan struct{})
	var (
		mu    sync.Mutex
		polls []unackedPoll
	)
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			from := time.Now()
			_, unacked, _ := brokertest.Counts(t, q)
			mu.Lock()
			polls = append(polls, unackedPoll{from: from, to: time.Now(), unacked: unacked})
			mu.Unlock()
		}
	}()
	stop = func() []unackedPoll {
		select {
		case <-done:
		default:
			close(done)
		}
		<-finished
		return polls
	}
	t.Cleanup(func() { stop() })
	polled = func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(polls)
	}
	return stop, polled
}
