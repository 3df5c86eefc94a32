package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
)

// A copy the broker did not take hands its original back to the queue,
// which delivers it again at once: without a pause that is a hot loop.
const (
	// minCopyBackoff and maxCopyBackoff bound how long a message whose
	// copy failed stays in its handler slot before it is handed back.
	minCopyBackoff = 200 * time.Millisecond
	maxCopyBackoff = 10 * time.Second
	// minDeclareBackoff is the shortest time between two declarations of
	// the topology made because a copy was unroutable.
	minDeclareBackoff = time.Second
)

// Reasons a copy failed, the values of warren_copy_failures_total's label.
const (
	copyUnroutable  = "unroutable"    // no queue took it: one of warren's queues is gone
	copyRefused     = "refused"       // the broker nacked it (a queue at its length limit)
	copyChannelErr  = "channel_error" // the broker closed the publishing channel (403 ACCESS_REFUSED)
	copyUnconfirmed = "unconfirmed"   // no confirm came: timeout, or the connection went
)

// handBacks is what the worker remembers of one kind of its publishes
// (copies, replies) that the broker did not take, shared by its handler
// goroutines: how long the next hand-back of an original waits, and which
// failures were logged at error level already. A confirmed publish clears
// it.
type handBacks struct {
	mu       sync.Mutex
	wait     backoff             // hand-back delays
	reported map[string]struct{} // failures logged at error level
}

func newHandBacks() *handBacks {
	return &handBacks{
		wait:     backoff{min: minCopyBackoff, max: maxCopyBackoff},
		reported: make(map[string]struct{}),
	}
}

// failed records a failure of the kind key. It returns how long the
// original waits before it is handed back, and where to log the failure:
// at error level the first time, at debug level after that.
func (h *handBacks) failed(key string, log *zap.Logger) (time.Duration, func(string, ...zap.Field)) {
	h.mu.Lock()
	_, again := h.reported[key]
	h.reported[key] = struct{}{}
	delay := h.wait.next()
	h.mu.Unlock()
	if again {
		return delay, log.Debug
	}
	return delay, log.Error
}

// confirmed clears what failed remembered.
func (h *handBacks) confirmed() {
	h.mu.Lock()
	h.wait.reset()
	clear(h.reported)
	h.mu.Unlock()
}

// copyFailures is what the worker remembers of failed copies: their
// hand-backs, why the worker is not ready, and when the topology may be
// declared again. A confirmed copy clears it all.
type copyFailures struct {
	failing atomic.Bool            // some copy failed since the last confirmed one
	trouble atomic.Pointer[string] // the readiness reason while copies fail

	*handBacks
	// Guarded by handBacks.mu.
	declare  backoff   // delays between declarations
	nextDecl time.Time // no declaration before this
}

func newCopyFailures() *copyFailures {
	return &copyFailures{
		handBacks: newHandBacks(),
		declare:   backoff{min: minDeclareBackoff, max: maxBackoff},
	}
}

// copyReason classifies a failed copy for the metric and the log.
func copyReason(err error) string {
	var aerr *amqp.Error
	switch {
	case errors.Is(err, broker.ErrUnroutable):
		return copyUnroutable
	case errors.Is(err, broker.ErrNacked):
		return copyRefused
	case errors.As(err, &aerr) && aerr.Code != amqp.ChannelError:
		return copyChannelErr
	}
	return copyUnconfirmed
}

// copyFailed deals with a copy of d to queue that the broker did not
// confirm, before d is handed back: it counts and reports the failure,
// declares the topology again when the copy was unroutable, and keeps d for
// a growing delay so that the hand-back never loops hot.
func (s *session) copyFailed(ctx context.Context, d *amqp.Delivery, queue string, o Outcome, err error) {
	w := s.w
	reason := copyReason(err)
	w.metrics.copyFailures.WithLabelValues(reason).Inc()
	if s.ch.IsClosed() {
		// d's channel went too (the connection did): that is logged where
		// it is handled, and the broker has requeued d already.
		w.log.Debug("copy not confirmed; the original's channel closed", zap.String("to", queue), zap.String("message_id", d.MessageId), zap.Error(err))
		return
	}
	f := w.copyFail
	f.failing.Store(true)
	what := "refused"
	if reason == copyUnroutable || reason == copyUnconfirmed {
		what = reason
	}
	why := fmt.Sprintf("copies %s: to %s: %v", what, queue, err)
	f.trouble.Store(&why)
	key := reason + " " + queue
	var aerr *amqp.Error
	if errors.As(err, &aerr) {
		key += fmt.Sprint(" ", aerr.Code)
	}
	delay, log := f.failed(key, w.log)
	log("copy not confirmed; handing the message back", zap.String("to", queue), zap.String("reason", reason),
		zap.Stringer("outcome", o), zap.String("message_id", d.MessageId), zap.Duration("hand_back_in", delay), zap.Error(err))
	if reason == copyUnroutable {
		s.declareAgain()
	}
	s.wait(ctx, delay)
}

// copyConfirmed clears what copyFailed remembered, once copies go through
// again.
func (w *Worker) copyConfirmed() {
	f := w.copyFail
	if !f.failing.Swap(false) {
		return
	}
	f.confirmed()
	f.mu.Lock()
	f.declare.reset()
	f.nextDecl = time.Time{}
	f.mu.Unlock()
	if f.trouble.Swap(nil) != nil {
		w.log.Info("copies confirmed again")
	}
}

// declareAgain declares the topology on a channel of its own, at most once
// per backoff delay: a copy was unroutable, so one of warren's queues was
// deleted under it. A failure is logged; the copy's hand-back goes on.
func (s *session) declareAgain() {
	w, f := s.w, s.w.copyFail
	f.mu.Lock()
	now := time.Now()
	if now.Before(f.nextDecl) {
		f.mu.Unlock()
		return
	}
	f.nextDecl = now.Add(f.declare.next())
	f.mu.Unlock()

	ch, err := s.conn.Channel()
	if err == nil {
		err = w.cfg.Topology.Apply(ch)
		if cerr := ch.Close(); err == nil && cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = fmt.Errorf("close channel: %w", cerr)
		}
	}
	if err != nil {
		w.log.Error("declare the topology again for an unroutable copy", zap.Error(err))
		return
	}
	w.log.Info("declared the topology again: a copy was unroutable")
}

// wait waits for d, or less when ctx ends (the shutdown timeout), the
// drain begins or the session ends: a held message never delays a drain.
func (s *session) wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-s.stopping:
	case <-s.ended:
	}
}
