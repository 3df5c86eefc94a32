package worker

import (
	"context"
	"errors"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

// Handler processes one message. Returning nil acks it; an error marked
// with Permanent makes it dead; any other error retries it, and one marked
// with Unavailable also says that the downstream is down (CircuitConfig). A
// handler must return soon after ctx is done: ctx ends at the handler
// timeout, and when a shutdown runs out of time.
type Handler interface {
	Handle(ctx context.Context, m *Message) error
}

// KillGrace is how long a handler that runs processes gives them to exit
// after SIGTERM, once its context is done, before SIGKILL (the exec
// handler's default). The drain waits for a cancelled handler that long
// and a second more, so that it sees such a handler return.
const KillGrace = 5 * time.Second

// HandlerFunc lets an ordinary function serve as a Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *Message) error { return f(ctx, m) }

// Message is one delivery as a handler sees it. A handler may read it
// freely but must not keep it after Handle returns.
type Message struct {
	Body            []byte
	Headers         amqp.Table
	ContentType     string
	ContentEncoding string
	DeliveryMode    uint8
	Priority        uint8
	CorrelationID   string
	ReplyTo         string
	Expiration      string
	MessageID       string
	Timestamp       time.Time
	Type            string
	UserID          string
	AppID           string

	// Exchange and RoutingKey say how the message was published.
	Exchange   string
	RoutingKey string
	// Redelivered is set by the broker when an earlier delivery of this
	// message was not acked (a consumer died, or it was requeued).
	Redelivered bool
	// Attempt is 1 the first time a message is handled, and one more for
	// each retry (from the x-warren-attempts header).
	Attempt int

	// Reply is the handler's answer to a request, one that carries
	// ReplyTo: set it, and return nil, and the worker publishes it to
	// ReplyTo through the default exchange with the request's
	// CorrelationID, and waits for the broker's confirm before it acks
	// the request. Left nil, no reply is sent (a handler may send its
	// own). It is ignored without ReplyTo, and when the handler fails.
	Reply *Reply
}

// Reply is a handler's answer to a request (Message.Reply).
type Reply struct {
	Body        []byte
	ContentType string
	// Headers become the reply's AMQP headers.
	Headers amqp.Table
}

func newMessage(d *amqp.Delivery) *Message {
	m := &Message{
		Body:            d.Body,
		Headers:         d.Headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    d.DeliveryMode,
		Priority:        d.Priority,
		CorrelationID:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Expiration:      d.Expiration,
		MessageID:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		UserID:          d.UserId,
		AppID:           d.AppId,
		Exchange:        d.Exchange,
		RoutingKey:      d.RoutingKey,
		Redelivered:     d.Redelivered,
		Attempt:         broker.Attempts(d.Headers) + 1,
	}
	// A retried message comes back through warren's queues: show how it
	// was first published.
	if rk, ok := d.Headers[broker.HeaderRoutingKey].(string); ok {
		m.RoutingKey = rk
		m.Exchange, _ = d.Headers[broker.HeaderExchange].(string)
	}
	return m
}

// Outcome is what becomes of a message once its handler returned.
type Outcome int

// Outcomes, in the order of the warren_messages_total label values.
const (
	// Ack: the handler succeeded.
	Ack Outcome = iota
	// Retry: the handler failed and the message should be tried again.
	Retry
	// Dead: the handler failed for good.
	Dead
	// Requeue: the message goes back to the queue untried, as when a
	// shutdown hands back what it has not finished.
	Requeue
	// Deferred: the message came back before the time its handler asked
	// it to wait for, and waits again, untried.
	Deferred

	numOutcomes
)

func (o Outcome) String() string {
	switch o {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case Dead:
		return "dead"
	case Requeue:
		return "requeue"
	case Deferred:
		return "deferred"
	}
	return "unknown"
}

// permanentError marks an error as permanent.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: the message is dead, not retried.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// OutcomeOf maps a handler's result to an outcome: nil acks, Permanent
// errors are dead, every other error retries.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Ack
	case IsPermanent(err):
		return Dead
	default:
		return Retry
	}
}

// retryAfterError asks for a retry no sooner than after.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks err as transient, to be retried no sooner than after d.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, after: d}
}

// RetryDelay returns the wait that err, or an error it wraps, asks for
// with RetryAfter; ok is false when it asks for none. The engine reads it
// to delay a retry; a handler's tests read it to check what it asks.
func RetryDelay(err error) (d time.Duration, ok bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.after, true
	}
	return 0, false
}
