package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/worker"
)

// requester is the client side of RPC over AMQP for warren publish
// -reply: it publishes each request with RabbitMQ's direct reply-to and a
// correlation id of its own, and waits for the matching answer. Direct
// reply-to needs no queue of the requester's: the broker hands the answer
// to the channel that published the request, the publisher's, which
// consumes amq.rabbitmq.reply-to without acks.
type requester struct {
	pub     *broker.Publisher
	answers <-chan amqp.Delivery
	timeout time.Duration
}

// newRequester opens a publisher on conn that consumes the answers to the
// requests it publishes.
func newRequester(conn *amqp.Connection, timeout time.Duration) (*requester, error) {
	pub, err := broker.NewPublisher(conn)
	if err != nil {
		return nil, err
	}
	answers, err := pub.ConsumeReplies()
	if err != nil {
		pub.Close()
		return nil, err
	}
	return &requester{pub: pub, answers: answers, timeout: timeout}, nil
}

// errDeadRequest is the error of a request whose answer is warren's
// error reply (WARREN_REPLY_ON_DEAD).
var errDeadRequest = errors.New("the request is dead")

// call publishes msg to exchange with key, with reply_to and a new
// correlation id, and returns the answer whose correlation id is that
// one. Answers to earlier requests, come late, are skipped.
func (r *requester) call(ctx context.Context, exchange, key string, msg amqp.Publishing) (amqp.Delivery, error) {
	id := broker.NewID()
	msg.ReplyTo, msg.CorrelationId = broker.DirectReplyTo, id
	msg.MessageId = id
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	// Persistent and mandatory: a request no queue takes ends with
	// broker.ErrUnroutable, one the broker refuses with broker.ErrNacked.
	if err := r.pub.Publish(ctx, exchange, key, msg); err != nil {
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			return amqp.Delivery{}, fmt.Errorf("the broker did not confirm the request within -timeout=%s", r.timeout)
		}
		return amqp.Delivery{}, err
	}
	for {
		select {
		case d, ok := <-r.answers:
			if !ok {
				return amqp.Delivery{}, fmt.Errorf("wait for the reply: %w", amqp.ErrClosed)
			}
			if d.CorrelationId != id {
				continue
			}
			if d.Headers[worker.HeaderReplyOutcome] == worker.Dead.String() {
				return d, fmt.Errorf("%w: %s", errDeadRequest, d.Body)
			}
			return d, nil
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				return amqp.Delivery{}, fmt.Errorf("no reply within -timeout=%s (correlation id %s): is a worker consuming %q, and does its handler answer?", r.timeout, id, key)
			}
			return amqp.Delivery{}, ctx.Err()
		}
	}
}

// close closes the requester's channel.
func (r *requester) close() { r.pub.Close() }

// runRequests publishes each message of msgs as a request and writes the
// body of its answer to stdout, followed by a newline unless it ends with
// one; it stops at the first request that fails.
func runRequests(ctx context.Context, conn *amqp.Connection, exchange, key string, timeout time.Duration, msgs iter.Seq[amqp.Publishing], stdout io.Writer) error {
	r, err := newRequester(conn, timeout)
	if err != nil {
		return err
	}
	defer r.close()
	for msg := range msgs {
		d, err := r.call(ctx, exchange, key, msg)
		if err != nil {
			return err
		}
		out := d.Body
		if !bytes.HasSuffix(out, []byte("\n")) {
			out = append(out, '\n')
		}
		if _, err := stdout.Write(out); err != nil {
			return fmt.Errorf("write the reply: %w", err)
		}
	}
	return nil
}
