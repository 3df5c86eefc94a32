package worker

import (
	"context"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

const (
	// DefaultMaxAttempts is how many attempts a message has by default.
	DefaultMaxAttempts = 5
	// maxReasonBytes bounds the reason written on a dead message.
	maxReasonBytes = 1024
	// copyTimeout bounds the wait for the broker to confirm a copy; past
	// it the original is handed back instead.
	copyTimeout = 30 * time.Second
	// maxHold bounds the wait of a message in its handler slot for a
	// Retry-After when there are no retry queues: well below RabbitMQ's
	// default consumer_timeout (30 minutes), past which the broker closes
	// a channel whose delivery stays unacked.
	maxHold = 10 * time.Minute
)

// retryTarget returns the queue a message waits in before its next
// attempt, after its attempt-th one failed and its handler asked to wait
// at least after. When after is longer than every retry queue holds a
// message, it returns the longest one and the time before which the message
// must not be tried: it then waits there as often as needed. With no retry
// queues it returns Q itself: the message goes to its tail.
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
// d, or, if none is that long, the longest, and its delay. There must be
// retry queues: warren publishes only to queues it declared.
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

// fate is what becomes of a delivery once its handler returned, read from
// its headers and the handler's error once.
type fate struct {
	outcome Outcome
	why     string        // for Dead: the reason written on the dead copy
	attempt int           // the attempt that just ended, from 1
	after   time.Duration // for Retry: the wait the handler asked for, if any
	reply   *Reply        // for Ack: the handler's answer to a request with reply_to, if any
	// handBack: for Requeue, the circuit is open: the message goes back
	// untried by handBack, not by a nack.
	handBack bool
}

// verdict returns the fate of d now that its handler returned o and err: a
// retry whose attempts are used up, or whose handler asked for a longer
// wait than MaxRetryAfter, is dead.
func (w *Worker) verdict(d *amqp.Delivery, o Outcome, err error) fate {
	f := fate{outcome: o, attempt: broker.Attempts(d.Headers) + 1}
	switch o {
	case Retry:
		f.after, _ = RetryDelay(err)
		switch {
		case f.attempt >= w.cfg.MaxAttempts:
			f.outcome, f.why = Dead, fmt.Sprintf("failed %d attempts, the most allowed; last: %v", f.attempt, err)
		case f.after > w.cfg.MaxRetryAfter:
			f.outcome, f.why = Dead, fmt.Sprintf("Retry-After %s exceeds WARREN_MAX_RETRY_AFTER (%s); last: %v",
				f.after.Round(time.Second), w.cfg.MaxRetryAfter, err)
		}
	case Dead:
		f.why = err.Error()
	}
	return f
}

// finish settles d as its fate f says. A retry or dead copy is published
// and confirmed before the original is acked; if that fails, the original
// goes back to the queue, so a duplicate is possible and a loss is not.
func (s *session) finish(ctx context.Context, d *amqp.Delivery, f fate) {
	w := s.w
	switch f.outcome {
	case Retry:
		if len(w.cfg.Topology.RetryDelays) == 0 && f.after > 0 {
			// No retry queue can hold it: it waits in its handler slot, as
			// long as the broker lets a delivery stay unacked.
			s.wait(ctx, min(f.after, maxHold))
		}
		queue, at := w.retryTarget(f.attempt, f.after, time.Now())
		msg := broker.CopyOf(d)
		msg.Headers[broker.HeaderAttempts] = int64(f.attempt)
		delete(msg.Headers, broker.HeaderRetryAt)
		if !at.IsZero() {
			msg.Headers[broker.HeaderRetryAt] = at.UnixMilli()
		}
		s.copyThenSettle(ctx, d, queue, msg, Retry, nil)
	case Dead:
		s.deadLetter(ctx, d, f.why, f.attempt)
	case Ack:
		if f.reply != nil {
			s.replyThenSettle(ctx, d, f.reply)
			return
		}
		s.settle(d, Ack)
	case Requeue:
		if f.handBack {
			s.handBack(ctx, d)
			return
		}
		s.settle(d, Requeue)
	default:
		s.settle(d, f.outcome)
	}
}

// handBack returns d to its queue untried while the circuit is open. On
// a quorum queue every nack counts a delivery against the queue's
// delivery limit (x-delivery-limit, or a policy's), and an outage's
// hand-backs (a probe's message each probe, the messages held each time
// the circuit opens) would use it up: the broker would dead-letter them,
// which is what the circuit is there to prevent. There d goes to the
// tail of the queue as a confirmed copy instead, its attempts unchanged
// and its deliveries counted anew, and is acked; a classic queue counts
// nothing, and gets the nack.
func (s *session) handBack(ctx context.Context, d *amqp.Delivery) {
	if !s.copiesBack() {
		s.settle(d, Requeue)
		return
	}
	s.copyThenSettle(ctx, d, s.w.cfg.Topology.Queue, broker.CopyOf(d), Requeue, nil)
}

// copiesBack reports whether handBack copies: on a quorum queue.
func (s *session) copiesBack() bool { return s.w.cfg.Topology.QueueType == broker.Quorum }

// deadLetter publishes a copy of d to the dead-letter queue with why and
// the attempts it had, then acks d.
func (s *session) deadLetter(ctx context.Context, d *amqp.Delivery, why string, n int) {
	w := s.w
	msg := broker.CopyOf(d)
	if len(why) > maxReasonBytes {
		why = why[:maxReasonBytes]
	}
	why = strings.ToValidUTF8(why, "?")
	msg.Headers[broker.HeaderReason] = why
	msg.Headers[broker.HeaderAttempts] = int64(n)
	msg.Headers[broker.HeaderDiedAt] = time.Now().UTC().Truncate(time.Second)
	msg.Headers[broker.HeaderQueue] = w.cfg.Topology.Queue
	delete(msg.Headers, broker.HeaderRetryAt)
	var errReply *amqp.Publishing
	if w.cfg.ReplyOnDead && d.ReplyTo != "" {
		r := deadReply(d, why, n)
		errReply = &r
	}
	if s.copyThenSettle(ctx, d, w.cfg.Topology.DeadQueue(), msg, Dead, errReply) {
		w.log.Warn("dead-lettered", w.traceFields(ctx, []zap.Field{zap.String("message_id", d.MessageId), zap.Int("attempts", n), zap.String("reason", why)})...)
	}
}

// deferUntil sends d, untried, to wait in a retry queue until its retry-at
// time, its attempts unchanged. It reports whether d was early: a retry-at
// time already passed, or without retry queues (which only a producer or
// an earlier configuration could have set), means nothing. A time further
// away than MaxRetryAfter makes d dead.
func (s *session) deferUntil(ctx context.Context, d *amqp.Delivery, at time.Time) bool {
	w := s.w
	wait := time.Until(at)
	if wait <= 0 || len(w.cfg.Topology.RetryDelays) == 0 {
		return false
	}
	if wait > w.cfg.MaxRetryAfter {
		s.deadLetter(ctx, d, fmt.Sprintf("%s %s is %s away: that exceeds WARREN_MAX_RETRY_AFTER (%s)",
			broker.HeaderRetryAt, at.UTC().Format(time.RFC3339), wait.Round(time.Second), w.cfg.MaxRetryAfter), broker.Attempts(d.Headers))
		return true
	}
	queue, _ := w.waitQueue(wait)
	s.copyThenSettle(ctx, d, queue, broker.CopyOf(d), Deferred, nil)
	return true
}

// copyThenSettle publishes msg to queue and acks d once the broker
// confirmed it, counting the outcome o, and reports whether it did. If the
// copy fails, d goes back to its queue after a delay; if d's channel is
// gone already, so is d (the broker requeued it), and no copy is made: it
// would be a duplicate. errReply, if any, is the error reply to d's
// requester (WARREN_REPLY_ON_DEAD), published once the copy is confirmed
// and confirmed in turn before d is acked.
func (s *session) copyThenSettle(ctx context.Context, d *amqp.Delivery, queue string, msg amqp.Publishing, o Outcome, errReply *amqp.Publishing) bool {
	w := s.w
	if s.ch.IsClosed() {
		s.settle(d, Requeue)
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, copyTimeout)
	defer cancel()
	kind := w.metrics.retryCopies
	switch o {
	case Dead:
		kind = w.metrics.deadCopies
	case Requeue:
		kind = w.metrics.handBackCopies
	}
	if w.tracer != nil {
		// Every attempt of one message shares its trace: a copy of a
		// message that came without one carries this attempt's.
		tracing.InjectIfAbsent(ctx, msg.Headers)
	}
	if err := s.copies.publish(cctx, queue, msg); err != nil {
		kind.failed.Inc()
		s.copyFailed(ctx, d, queue, o, err)
		s.settle(d, Requeue)
		return false
	}
	kind.confirmed.Inc()
	w.copyConfirmed()
	if errReply != nil && !s.sendReply(cctx, d, *errReply) {
		return false
	}
	s.ackAs(d, o)
	return true
}
