package worker

import (
	"context"
	"errors"
	"maps"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

// Headers of an error reply (WARREN_REPLY_ON_DEAD).
const (
	// HeaderReplyError carries why the request is dead; the body says it
	// too, as text/plain.
	HeaderReplyError = "x-warren-error"
	// HeaderReplyOutcome is "dead" on an error reply: a requester tells it
	// from an answer by this header.
	HeaderReplyOutcome = "x-warren-outcome"
)

// Outcomes of replies, the values of warren_replies_total's label.
const (
	replyConfirmed   = "confirmed"   // the broker took it
	replyUnroutable  = "unroutable"  // the requester's queue is gone: dropped, the request acked
	replyInvalid     = "invalid"     // the handler's headers cannot be sent: dropped, the request acked
	replyRefused     = "refused"     // nacked: the request was handed back
	replyUnconfirmed = "unconfirmed" // no confirm: the request was handed back
)

// replyThenSettle publishes the handler's reply to d's requester and acks
// d once the broker confirmed it; if the reply fails, d goes back to its
// queue after a delay.
func (s *session) replyThenSettle(ctx context.Context, d *amqp.Delivery, r *Reply) {
	if s.ch.IsClosed() {
		// d went back with its channel: a reply now would answer a
		// request that will be handled again.
		s.settle(d, Requeue)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, copyTimeout)
	defer cancel()
	if s.sendReply(cctx, d, replyOf(d, r)) {
		s.settle(d, Ack)
	}
}

// sendReply publishes msg to d's reply_to and reports whether d may be
// acked: the broker confirmed the reply, or returned it because the
// requester's queue is gone (retrying cannot bring it back: the reply is
// dropped, counted and logged). A reply refused or not confirmed hands d
// back after a growing delay, and sendReply returns false.
func (s *session) sendReply(ctx context.Context, d *amqp.Delivery, msg amqp.Publishing) bool {
	w := s.w
	if err := msg.Headers.Validate(); err != nil {
		w.metrics.replies.WithLabelValues(replyInvalid).Inc()
		w.log.Error("reply dropped: its headers cannot be sent", zap.String("reply_to", d.ReplyTo),
			zap.String("message_id", d.MessageId), zap.Error(err))
		return true
	}
	if w.tracer != nil {
		// The requester's trace goes on through the answer, whose parent
		// is the attempt that made it; one the handler set is its own.
		tracing.InjectIfAbsent(ctx, msg.Headers)
	}
	err := s.copies.reply(ctx, d.ReplyTo, msg)
	switch {
	case err == nil:
		w.metrics.replies.WithLabelValues(replyConfirmed).Inc()
		w.replyFail.confirmed()
		return true
	case errors.Is(err, broker.ErrUnroutable):
		w.metrics.replies.WithLabelValues(replyUnroutable).Inc()
		w.log.Warn("reply dropped: no queue of that name (the requester is gone)", zap.String("reply_to", d.ReplyTo),
			zap.String("correlation_id", d.CorrelationId), zap.String("message_id", d.MessageId))
		return true
	}
	reason := replyUnconfirmed
	if errors.Is(err, broker.ErrNacked) {
		reason = replyRefused
	}
	w.metrics.replies.WithLabelValues(reason).Inc()
	if s.ch.IsClosed() {
		w.log.Debug("reply not confirmed; the request's channel closed", zap.String("reply_to", d.ReplyTo), zap.Error(err))
		s.settle(d, Requeue)
		return false
	}
	// Unlike failed copies, a failed reply does not make the worker not
	// ready: it is one requester's queue that refuses, not warren's.
	delay, log := w.replyFail.failed(reason, w.log)
	log("reply not confirmed; handing the request back", zap.String("reply_to", d.ReplyTo), zap.String("reason", reason),
		zap.String("message_id", d.MessageId), zap.Duration("hand_back_in", delay), zap.Error(err))
	s.wait(ctx, delay)
	s.settle(d, Requeue)
	return false
}

// replyOf returns the reply r to d: to its reply_to, with its
// correlation id, persistent unless d was not.
func replyOf(d *amqp.Delivery, r *Reply) amqp.Publishing {
	h := make(amqp.Table, len(r.Headers)+1)
	maps.Copy(h, r.Headers)
	return amqp.Publishing{
		Headers:       h,
		ContentType:   r.ContentType,
		DeliveryMode:  replyMode(d),
		CorrelationId: d.CorrelationId,
		Timestamp:     time.Now().UTC().Truncate(time.Second),
		AppId:         "warren",
		Body:          r.Body,
	}
}

// deadReply returns the error reply to d, dead after n attempts for why.
func deadReply(d *amqp.Delivery, why string, n int) amqp.Publishing {
	return replyOf(d, &Reply{
		Body:        []byte(why),
		ContentType: "text/plain; charset=utf-8",
		Headers: amqp.Table{
			HeaderReplyOutcome:    Dead.String(),
			HeaderReplyError:      why,
			broker.HeaderAttempts: int64(n),
		},
	})
}

// replyMode is the delivery mode of a reply to d: persistent unless d was
// transient.
func replyMode(d *amqp.Delivery) uint8 {
	if d.DeliveryMode == amqp.Transient {
		return amqp.Transient
	}
	return amqp.Persistent
}
