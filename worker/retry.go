package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
)

const (
	// DefaultMaxAttempts is how many attempts a message has by default.
	DefaultMaxAttempts = 5
	// maxReasonBytes bounds the reason written on a dead message.
	maxReasonBytes = 1024
	// copyTimeout bounds the wait for the broker to confirm a copy; past
	// it the original is handed back instead.
	copyTimeout = 30 * time.Second
)

// retryTarget returns the queue a message waits in before its next
// attempt, after its attempt-th one failed and its handler asked to wait
// at least after. When after is longer than every retry queue holds a
// message, it returns the longest one and the time before which the message
// must not be tried: it then waits there as often as needed.
func (w *Worker) retryTarget(attempt int, after time.Duration, now time.Time) (string, time.Time) {
	delays := w.cfg.Topology.RetryDelays
	if len(delays) == 0 {
		return w.cfg.Topology.Queue, time.Time{}
	}
	d := delays[min(attempt, len(delays))-1]
	if after <= d {
		return w.cfg.Topology.RetryQueue(d), time.Time{}
	}
	q, wait := w.waitQueue(after)
	if wait < after {
		return q, now.Add(after)
	}
	return q, time.Time{}
}

// waitQueue returns the retry queue with the shortest delay of at least
// d, or, if none is that long, the longest, and its delay.
func (w *Worker) waitQueue(d time.Duration) (string, time.Duration) {
	var best, longest time.Duration
	for _, x := range w.cfg.Topology.RetryDelays {
		if x >= d && (best == 0 || x < best) {
			best = x
		}
		longest = max(longest, x)
	}
	if best == 0 {
		best = longest
	}
	return w.cfg.Topology.RetryQueue(best), best
}

// finish decides what becomes of d now that its handler returned with o and
// err, and settles it. A retry or dead copy is published and confirmed
// before the original is acked; if that fails, the original goes back to
// the queue, so a duplicate is possible and a loss is not.
func (s *session) finish(ctx context.Context, d *amqp.Delivery, o Outcome, err error) {
	w := s.w
	switch o {
	case Retry:
		n := broker.Attempts(d.Headers) + 1
		if n >= w.cfg.MaxAttempts {
			s.deadLetter(ctx, d, fmt.Sprintf("failed %d attempts, the most allowed; last: %v", n, err), n)
			return
		}
		after, _ := retryDelay(err)
		queue, at := w.retryTarget(n, after, time.Now())
		msg := broker.CopyOf(d)
		msg.Headers[broker.HeaderAttempts] = int64(n)
		delete(msg.Headers, broker.HeaderRetryAt)
		if !at.IsZero() {
			msg.Headers[broker.HeaderRetryAt] = at.UnixMilli()
		}
		s.copyThenSettle(ctx, d, queue, msg, Retry)
	case Dead:
		s.deadLetter(ctx, d, err.Error(), broker.Attempts(d.Headers)+1)
	default:
		s.settle(d, o)
	}
}

// deadLetter publishes a copy of d to the dead-letter queue with why and
// the attempts it had, then acks d.
func (s *session) deadLetter(ctx context.Context, d *amqp.Delivery, why string, n int) {
	w := s.w
	msg := broker.CopyOf(d)
	if len(why) > maxReasonBytes {
		why = why[:maxReasonBytes]
	}
	msg.Headers[broker.HeaderReason] = strings.ToValidUTF8(why, "?")
	msg.Headers[broker.HeaderAttempts] = int64(n)
	msg.Headers[broker.HeaderDiedAt] = time.Now().UTC().Truncate(time.Second)
	msg.Headers[broker.HeaderQueue] = w.cfg.Topology.Queue
	delete(msg.Headers, broker.HeaderRetryAt)
	s.copyThenSettle(ctx, d, w.cfg.Topology.DeadQueue(), msg, Dead)
}

// deferUntil sends d, untried, to wait in a retry queue until its retry-at
// time, its attempts unchanged.
func (s *session) deferUntil(ctx context.Context, d *amqp.Delivery, at time.Time) {
	queue, _ := s.w.waitQueue(time.Until(at))
	s.copyThenSettle(ctx, d, queue, broker.CopyOf(d), Deferred)
}

// copyThenSettle publishes msg to queue and acks d once the broker
// confirmed it, counting the outcome o; if the copy fails, d goes back to
// its queue.
func (s *session) copyThenSettle(ctx context.Context, d *amqp.Delivery, queue string, msg amqp.Publishing, o Outcome) {
	w := s.w
	cctx, cancel := context.WithTimeout(ctx, copyTimeout)
	defer cancel()
	kind := w.metrics.retryCopies
	if o == Dead {
		kind = w.metrics.deadCopies
	}
	if err := s.copies.publish(cctx, queue, msg); err != nil {
		kind.failed.Inc()
		if !errors.Is(err, amqp.ErrClosed) {
			w.log.Error("copy not confirmed; handing the message back", zap.String("to", queue),
				zap.Stringer("outcome", o), zap.String("message_id", d.MessageId), zap.Error(err))
		}
		s.settle(d, Requeue)
		return
	}
	kind.confirmed.Inc()
	s.settle(d, o)
}
