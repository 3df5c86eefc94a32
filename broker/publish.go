package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"sync"
	"time"

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
type Publisher struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error // the broker's reason, when it closes ch

	reasonOnce sync.Once
	reason     *amqp.Error

	mu       sync.Mutex
	returned map[string]struct{} // message ids the broker returned
}

// maxReturns bounds the returns buffered between two waits. amqp091-go
// blocks its reader on a full notification channel, so it is sized above
// the number of messages a caller keeps unconfirmed.
const maxReturns = 4096

// NewPublisher opens a channel on conn and puts it in confirm mode.
func NewPublisher(conn *amqp.Connection) (*Publisher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open publish channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	return &Publisher{
		ch:       ch,
		returns:  ch.NotifyReturn(make(chan amqp.Return, maxReturns)),
		closes:   ch.NotifyClose(make(chan *amqp.Error, 1)),
		returned: make(map[string]struct{}),
	}, nil
}

// Close closes the publisher's channel.
func (p *Publisher) Close() error { return p.ch.Close() }

// Pending is a published message whose confirm is outstanding.
type Pending struct {
	dc *amqp.DeferredConfirmation
	id string
}

// Send publishes msg without waiting for its confirm. msg is made
// persistent, and given a message id if it has none, to match a return.
func (p *Publisher) Send(ctx context.Context, exchange, key string, msg amqp.Publishing) (*Pending, error) {
	msg.DeliveryMode = amqp.Persistent
	if msg.MessageId == "" {
		msg.MessageId = newID()
	}
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
		true,  // mandatory: an unroutable message is returned, not dropped
		false, // immediate
		msg)
	if err != nil {
		if p.ch.IsClosed() {
			err = p.closed()
		}
		return nil, fmt.Errorf("publish: %w", err)
	}
	return &Pending{dc: dc, id: msg.MessageId}, nil
}

// Wait waits for the confirm of m. It returns nil only when the broker
// confirmed the message and did not return it.
func (p *Publisher) Wait(ctx context.Context, m *Pending) error {
	acked, err := m.dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("wait for confirm: %w", err)
	}
	if !acked {
		if p.ch.IsClosed() {
			return fmt.Errorf("wait for confirm: %w", p.closed())
		}
		return ErrNacked
	}
	// The broker sends basic.return before basic.ack, and amqp091-go hands
	// frames on in order: a return for m is already buffered.
	p.mu.Lock()
	defer p.mu.Unlock()
drain:
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				// Closed with the channel: receiving again would spin.
				break drain
			}
			p.returned[r.MessageId] = struct{}{}
		default:
			break drain
		}
	}
	if _, ok := p.returned[m.id]; ok {
		delete(p.returned, m.id)
		return ErrUnroutable
	}
	return nil
}

// Publish sends msg and waits for its confirm.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	m, err := p.Send(ctx, exchange, key, msg)
	if err != nil {
		return err
	}
	return p.Wait(ctx, m)
}

func newID() string {
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

// closeReasonWait bounds the wait for the broker's reason for closing a
// channel: amqp091-go marks a channel closed a moment before it passes the
// reason on.
const closeReasonWait = time.Second

// closed returns the error of a publish on the closed channel: amqp.ErrClosed,
// and with it the reason the broker gave for closing the channel (403
// ACCESS_REFUSED when the user may not write, say), which is what an
// operator needs to read.
func (p *Publisher) closed() error {
	p.reasonOnce.Do(func() {
		t := time.NewTimer(closeReasonWait)
		defer t.Stop()
		select {
		case p.reason = <-p.closes: // nil, with the channel closed, on a Close of ours
		case <-t.C:
		}
	})
	if p.reason == nil {
		return amqp.ErrClosed
	}
	return &closedError{reason: p.reason}
}

// closedError is a publish that failed because the broker closed its
// channel for reason.
type closedError struct{ reason *amqp.Error }

func (e *closedError) Error() string   { return "channel closed by the broker: " + e.reason.Error() }
func (e *closedError) Unwrap() []error { return []error{e.reason, amqp.ErrClosed} }

// IsClosed reports whether the publisher's channel is closed; a closed
// publisher never publishes again.
func (p *Publisher) IsClosed() bool { return p.ch.IsClosed() }
