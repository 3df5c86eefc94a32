package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"maps"
	"strings"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Errors a publish ends with when the broker did not take the message.
var (
	// ErrNacked means the broker refused the message (basic.nack).
	ErrNacked = errors.New("broker refused the message (nack)")
	// ErrUnroutable means no queue was bound to take the message.
	ErrUnroutable = errors.New("message unroutable: no queue bound for it")
)

// Publisher publishes persistent, mandatory messages on a channel in
// confirm mode. It is safe for concurrent use.
//
// Each publish carries a token of its own in the x-warren-publish-id
// header, which the broker hands back in basic.return: a return is matched
// to exactly the publish it answers, never by a property the producer
// chose (copies of one message share its message id).
type Publisher struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error
	catchUp chan chan struct{} // Wait asks readReturns to record all it was handed
	stopped chan struct{}      // closed when readReturns ended
	// closeErr is why the broker closed the channel (a message over its
	// max_message_size, a missing exchange), nil for any other end; set
	// before stopped is closed.
	closeErr *amqp.Error

	mu sync.Mutex
	// pending holds the token of every publish sent and not yet waited
	// for, and whether the broker returned it. A return is recorded only
	// for a token still here, and a token leaves with its Wait: the map
	// never holds more than the publishes in flight.
	pending map[string]bool
}

// maxReturns bounds the returns buffered between the library's reader and
// readReturns, and the window of PublishAll.
const maxReturns = 4096

// NewPublisher opens a channel on conn and puts it in confirm mode. Close
// it when done: that ends the goroutine it starts.
func NewPublisher(conn *amqp.Connection) (*Publisher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open publish channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	p := &Publisher{
		ch:      ch,
		returns: ch.NotifyReturn(make(chan amqp.Return, maxReturns)),
		// The library sends it at most one error, before it closes the
		// returns channel: the buffer holds it until readReturns ends.
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		catchUp: make(chan chan struct{}),
		stopped: make(chan struct{}),
		pending: make(map[string]bool),
	}
	go p.readReturns()
	return p, nil
}

// readReturns records the returns of pending publishes until the channel
// closes. It drains the returns channel all the time: amqp091-go drops a
// return it cannot hand over within 5 s, and a dropped return would let
// an unroutable copy pass for confirmed.
func (p *Publisher) readReturns() {
	defer close(p.stopped)
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				select {
				case e := <-p.closes:
					p.closeErr = e
				default:
				}
				return
			}
			p.record(r)
		case done := <-p.catchUp:
			p.drainReturns()
			close(done)
		}
	}
}

// drainReturns records the returns already buffered.
func (p *Publisher) drainReturns() {
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				return // readReturns sees the close next
			}
			p.record(r)
		default:
			return
		}
	}
}

func (p *Publisher) record(r amqp.Return) {
	token, _ := r.Headers[HeaderPublishID].(string)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pending[token]; ok {
		p.pending[token] = true
	}
}

func (p *Publisher) forget(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, token)
}

// Close closes the publisher's channel and waits for its return reader to
// end.
func (p *Publisher) Close() error {
	err := p.ch.Close()
	<-p.stopped
	return err
}

// Pending is a published message whose confirm is outstanding.
type Pending struct {
	dc    *amqp.DeferredConfirmation
	token string
}

// Send publishes msg without waiting for its confirm; pass what it
// returns to Wait, once. msg is made persistent, given a message id if it
// has none, and a publish token of its own (any token it carries, from an
// earlier hop, is replaced); its headers are copied, not changed.
func (p *Publisher) Send(ctx context.Context, exchange, key string, msg amqp.Publishing) (*Pending, error) {
	msg.DeliveryMode = amqp.Persistent
	return p.send(ctx, exchange, key, msg, true)
}

// DirectReplyTo is the pseudo-queue of RabbitMQ's direct reply-to: a
// requester consumes it, and a reply_to that starts with it names the
// requester's channel.
const DirectReplyTo = "amq.rabbitmq.reply-to"

// IsDirectReplyTo reports whether a reply_to names a requester of direct
// reply-to rather than a queue.
func IsDirectReplyTo(replyTo string) bool {
	return strings.HasPrefix(replyTo, DirectReplyTo+".")
}

// ConsumeReplies consumes the answers to the requests the publisher sends
// with reply_to DirectReplyTo: RabbitMQ hands an answer to the channel
// that published its request, the publisher's own. Call it once, before
// the first request; the answers come unacked (direct reply-to has no
// acks), and the channel of them closes with the publisher.
func (p *Publisher) ConsumeReplies() (<-chan amqp.Delivery, error) {
	answers, err := p.ch.Consume(DirectReplyTo, "",
		true,  // autoAck: direct reply-to requires it
		false, // exclusive
		false, // noLocal
		false, // noWait
		nil)
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", DirectReplyTo, err)
	}
	return answers, nil
}

// PublishReply publishes msg, a reply, to the queue replyTo through the
// default exchange and waits for its confirm. Unlike Send it keeps msg's
// delivery mode (a reply is as persistent as its request). It is
// mandatory, so that a reply to a queue that is gone ends with
// ErrUnroutable, but for direct reply-to: RabbitMQ 3.10 returns such a
// reply (312 NO_ROUTE) even when it delivered it, and confirms it
// whether or not the requester is still there.
func (p *Publisher) PublishReply(ctx context.Context, replyTo string, msg amqp.Publishing) error {
	m, err := p.send(ctx, "", replyTo, msg, !IsDirectReplyTo(replyTo))
	if err != nil {
		return err
	}
	return p.Wait(ctx, m)
}

// send publishes msg with a message id and a publish token of its own.
func (p *Publisher) send(ctx context.Context, exchange, key string, msg amqp.Publishing, mandatory bool) (*Pending, error) {
	if msg.MessageId == "" {
		msg.MessageId = NewID()
	}
	token := NewID()
	h := make(amqp.Table, len(msg.Headers)+1)
	maps.Copy(h, msg.Headers)
	h[HeaderPublishID] = token
	msg.Headers = h
	// Registered before the publish: its return may come before
	// PublishWithDeferredConfirmWithContext returns.
	p.mu.Lock()
	p.pending[token] = false
	p.mu.Unlock()
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
		mandatory, // an unroutable message is returned, not dropped
		false,     // immediate
		msg)
	if err != nil {
		p.forget(token)
		if p.ch.IsClosed() {
			err = p.closedErr(ctx)
		}
		return nil, fmt.Errorf("publish: %w", err)
	}
	return &Pending{dc: dc, token: token}, nil
}

// Wait waits for the confirm of m. It returns nil only when the broker
// confirmed the message and did not return it.
func (p *Publisher) Wait(ctx context.Context, m *Pending) error {
	defer p.forget(m.token)
	acked, err := m.dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("wait for confirm: %w", err)
	}
	if !acked {
		if p.ch.IsClosed() {
			return fmt.Errorf("wait for confirm: %w", p.closedErr(ctx))
		}
		return ErrNacked
	}
	// The broker sends basic.return before basic.ack, and amqp091-go hands
	// both on in order: a return of m is buffered or already recorded.
	// readReturns records everything buffered before it answers.
	done := make(chan struct{})
	select {
	case p.catchUp <- done:
		<-done
	case <-p.stopped: // it recorded everything before it ended
	}
	p.mu.Lock()
	returned := p.pending[m.token]
	p.mu.Unlock()
	if returned {
		return ErrUnroutable
	}
	return nil
}

// closedErr returns why the channel closed: the broker's reason once the
// return reader has seen it, amqp.ErrClosed for any other end.
func (p *Publisher) closedErr(ctx context.Context) error {
	select {
	case <-p.stopped:
		if p.closeErr != nil {
			return closedBy{p.closeErr}
		}
	case <-ctx.Done():
	}
	return amqp.ErrClosed
}

// closedBy is the error of a channel the broker closed: its reason, and
// amqp.ErrClosed, as the library says of every closed channel.
type closedBy struct{ err *amqp.Error }

func (e closedBy) Error() string   { return "the broker closed the channel: " + e.err.Error() }
func (e closedBy) Unwrap() []error { return []error{e.err, amqp.ErrClosed} }

// errNotConfirmed stands for a confirm not waited for.
var errNotConfirmed = errors.New("confirm not waited for")

// poll returns what Wait would for m if its confirm has come, and
// errNotConfirmed otherwise, without waiting.
func (p *Publisher) poll(m *Pending) error {
	select {
	case <-m.dc.Done():
		return p.Wait(context.Background(), m)
	default:
		p.forget(m.token)
		return errNotConfirmed
	}
}

// Publish sends msg and waits for its confirm.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	m, err := p.Send(ctx, exchange, key, msg)
	if err != nil {
		return err
	}
	return p.Wait(ctx, m)
}

// NewID returns a new random id, 32 hex digits: what warren gives a
// message without a message id, and a request its correlation id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// PublishAll publishes every message of msgs, keeping at most window of
// them unconfirmed, and returns how many the broker confirmed. It goes on
// after a refused or unroutable message and returns the first such error;
// it stops at the first error of the channel itself.
func (p *Publisher) PublishAll(ctx context.Context, exchange, key string, window int, msgs iter.Seq[amqp.Publishing]) (int, error) {
	window = min(max(window, 1), maxReturns)
	var (
		pending   []*Pending
		confirmed int
		firstErr  error
	)
	defer func() {
		// Left unwaited by an early return: their returns are not wanted.
		for _, m := range pending {
			p.forget(m.token)
		}
	}()
	wait := func(m *Pending) error {
		err := p.Wait(ctx, m)
		switch {
		case err == nil:
			confirmed++
		case errors.Is(err, ErrNacked) || errors.Is(err, ErrUnroutable):
			if firstErr == nil {
				firstErr = err
			}
			return nil
		}
		return err
	}
	for msg := range msgs {
		if len(pending) == window {
			if err := wait(pending[0]); err != nil {
				return confirmed, err
			}
			pending = pending[1:]
		}
		m, err := p.Send(ctx, exchange, key, msg)
		if err != nil {
			return confirmed, err
		}
		pending = append(pending, m)
	}
	for _, m := range pending {
		if err := wait(m); err != nil {
			return confirmed, err
		}
	}
	return confirmed, firstErr
}

// IsClosed reports whether the publisher's channel is closed; a closed
// publisher never publishes again.
func (p *Publisher) IsClosed() bool { return p.ch.IsClosed() }
