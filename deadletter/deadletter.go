// Package deadletter reads and replays the messages in warren's
// dead-letter queue.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

// Entry is one dead message.
type Entry struct {
	MessageID string
	// Reason says why it died: warren's x-warren-reason, or for a message
	// the broker dead-lettered (a quorum queue's delivery limit), the
	// reason in its x-death header.
	Reason   string
	Attempts int
	DiedAt   time.Time
	// RoutingKey is the key the message was first published with.
	RoutingKey string
	Body       []byte
	Headers    amqp.Table
}

// List returns how many messages the dead-letter queue of t holds and the
// first n of them. It takes them without acking and hands them back at
// once, so nothing is lost, and they keep their place.
func List(ctx context.Context, conn *amqp.Connection, t broker.Topology, n int) (int, []Entry, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, nil, fmt.Errorf("open channel: %w", err)
	}
	// Closing the channel hands back whatever is still unacked, even if
	// the explicit nack below was never sent.
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(t.DeadQueue(), true, false, false, false, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("inspect queue %q: %w", t.DeadQueue(), err)
	}
	var (
		entries []Entry
		last    uint64
	)
	for len(entries) < min(n, q.Messages) && ctx.Err() == nil {
		d, ok, err := ch.Get(t.DeadQueue(), false)
		if err != nil {
			return 0, nil, fmt.Errorf("get from %q: %w", t.DeadQueue(), err)
		}
		if !ok {
			break
		}
		last = d.DeliveryTag
		entries = append(entries, entryOf(&d))
	}
	if last > 0 {
		if err := ch.Nack(last, true, true); err != nil {
			return 0, nil, fmt.Errorf("hand back messages: %w", err)
		}
	}
	return q.Messages, entries, ctx.Err()
}

func entryOf(d *amqp.Delivery) Entry {
	e := Entry{
		MessageID:  d.MessageId,
		Attempts:   broker.Attempts(d.Headers),
		RoutingKey: d.RoutingKey,
		Body:       d.Body,
		Headers:    d.Headers,
	}
	e.Reason, _ = d.Headers[broker.HeaderReason].(string)
	e.DiedAt, _ = d.Headers[broker.HeaderDiedAt].(time.Time)
	if rk, ok := d.Headers[broker.HeaderRoutingKey].(string); ok {
		e.RoutingKey = rk
	}
	if e.Reason == "" {
		// Dead-lettered by the broker: x-death says why and when.
		if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
			if death, ok := deaths[0].(amqp.Table); ok {
				if r, ok := death["reason"].(string); ok {
					e.Reason = "broker: " + r
				}
				if at, ok := death["time"].(time.Time); ok && e.DiedAt.IsZero() {
					e.DiedAt = at
				}
			}
		}
	}
	return e
}

// ErrUnconfirmed marks a replay that ended with a copy sent and neither
// confirmed nor refused: the copy may be in the queue, or not, and the
// dead message stays in the dead-letter queue.
var ErrUnconfirmed = errors.New("a copy was sent and not confirmed: it may or may not have reached the queue")

// Replay moves messages from the dead-letter queue of t back to its queue,
// at most limit of them (0: all those there when it starts, so that
// messages that die again meanwhile are not replayed in a loop). Each copy
// starts again at attempt 1; each dead message is acked only after its
// copy is confirmed. It returns how many it moved.
func Replay(ctx context.Context, conn *amqp.Connection, t broker.Topology, limit int) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(t.DeadQueue(), true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("inspect queue %q: %w", t.DeadQueue(), err)
	}
	if limit <= 0 || limit > q.Messages {
		limit = q.Messages
	}
	pub, err := broker.NewPublisher(conn)
	if err != nil {
		return 0, err
	}
	defer pub.Close()

	moved := 0
	for moved < limit {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		d, ok, err := ch.Get(t.DeadQueue(), false)
		if err != nil {
			return moved, fmt.Errorf("get from %q: %w", t.DeadQueue(), err)
		}
		if !ok {
			break
		}
		if err := pub.Publish(ctx, "", t.Queue, replayCopy(&d, t.Queue)); err != nil {
			if !errors.Is(err, broker.ErrNacked) && !errors.Is(err, broker.ErrUnroutable) {
				err = fmt.Errorf("%w: %w", ErrUnconfirmed, err)
			}
			// The dead message stays where it was; closing the channel
			// hands it back if the nack does not.
			return moved, errors.Join(fmt.Errorf("replay to %q: %w", t.Queue, err), ch.Nack(d.DeliveryTag, false, true))
		}
		if err := ch.Ack(d.DeliveryTag, false); err != nil {
			// Its copy is in the queue: it may be handled twice, never lost.
			return moved, fmt.Errorf("remove replayed message from %q: %w", t.DeadQueue(), err)
		}
		moved++
	}
	return moved, nil
}

// replayCopy returns the copy of d, a message of queue's dead-letter
// queue, that goes back to queue: its attempts and the marks of its death
// gone. A message the broker dead-lettered from queue itself (a quorum
// queue's delivery limit) never had a copy made by warren: the broker's
// x-death entry for queue, and only that one, says how it was published.
func replayCopy(d *amqp.Delivery, queue string) amqp.Publishing {
	if _, ok := d.Headers[broker.HeaderRoutingKey]; !ok {
		if ex, rk, ok := diedIn(d.Headers, queue); ok {
			c := *d
			c.Headers = maps.Clone(d.Headers)
			c.Exchange, c.RoutingKey = ex, rk
			d = &c
		}
	}
	msg := broker.CopyOf(d)
	for _, h := range []string{broker.HeaderAttempts, broker.HeaderRetryAt, broker.HeaderReason,
		broker.HeaderDiedAt, broker.HeaderQueue, "x-death", "x-first-death-exchange",
		"x-first-death-queue", "x-first-death-reason", "x-delivery-count"} {
		delete(msg.Headers, h)
	}
	return msg
}

// diedIn returns the exchange and routing key of the x-death entry the
// broker wrote when it dead-lettered a message from queue.
func diedIn(h amqp.Table, queue string) (string, string, bool) {
	deaths, _ := h["x-death"].([]any)
	for _, x := range deaths {
		death, ok := x.(amqp.Table)
		if !ok || death["queue"] != queue {
			continue
		}
		ex, okEx := death["exchange"].(string)
		keys, _ := death["routing-keys"].([]any)
		if len(keys) == 0 || !okEx {
			return "", "", false
		}
		rk, ok := keys[0].(string)
		return ex, rk, ok
	}
	return "", "", false
}

// Dial opens a connection to a node of the cluster, as broker.Dialer.Dial
// does: each call moves on to the next node after a failure.
type Dial func(ctx context.Context) (*amqp.Connection, string, error)

// Replayed says what ReplayAcross did.
type Replayed struct {
	// Moved counts the copies confirmed whose dead message was then
	// acked: a message moved again after a lost connection counts twice.
	Moved int
	// Lost counts the connections lost on the way. Each may leave one
	// message in the queue twice: the one whose copy was confirmed and
	// whose ack was lost with the connection.
	Lost int
}

// ReplayAcross replays as Replay does, and rides through the loss of its
// connection: it dials again, with backoff for at most retryFor, and goes
// on from where it was, on whichever node answers. The limit (0: all the
// messages there when it starts) holds across connections, plus one per
// connection lost: a dead message whose copy was confirmed but whose ack
// was lost with the connection is handed back by the broker and replayed
// again, counted twice. After a loss, a queue found empty before the limit
// is watched for up to 30 s for the messages the lost connection held to
// come back. A duplicate is possible, a loss is not.
func ReplayAcross(ctx context.Context, dial Dial, t broker.Topology, limit int, retryFor time.Duration) (Replayed, error) {
	var r Replayed
	conn, closeConn, err := dialBounded(ctx, dial)
	if err != nil {
		return r, err
	}
	if limit <= 0 {
		n, _, err := List(ctx, conn, t, 0)
		if err != nil {
			_ = closeConn()
			return r, err
		}
		limit = n
	}
	wait := 100 * time.Millisecond
	for {
		lostWatch := broker.LostWatch(conn)
		n, err := Replay(ctx, conn, t, limit-r.Moved)
		r.Moved += n
		lost := err != nil && ctx.Err() == nil && lostWatch()
		if err == nil && r.Lost > 0 && r.Moved < limit && reappears(ctx, conn, t) {
			// A message the lost connection held is back in the queue.
			_ = closeConn()
			conn, closeConn, err = dialBounded(ctx, dial)
			if err != nil {
				return r, err
			}
			continue
		}
		_ = closeConn()
		if err == nil || !lost || ctx.Err() != nil {
			return r, err
		}
		r.Lost++
		if r.Moved > 0 {
			// The ack of the last message moved may have been lost with
			// the connection: the broker then hands it back and it is
			// replayed again, counted twice. One more keeps the oldest
			// message still there from being left behind.
			limit++
		}
		if r.Moved >= limit {
			return r, err
		}
		deadline := time.Now().Add(retryFor)
		for {
			conn, closeConn, err = dialBounded(ctx, dial)
			if err == nil {
				break
			}
			if time.Now().Add(wait).After(deadline) {
				return r, fmt.Errorf("connection lost, no node reached within %s: %w", retryFor, err)
			}
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
		}
	}
}

// dialBounded dials a node and ties the connection to ctx, as
// broker.CloseWhenDone does: the end of ctx closes it, within a bound
// even while the broker blocks it. Call the function it returns once done.
func dialBounded(ctx context.Context, dial Dial) (*amqp.Connection, func() error, error) {
	conn, _, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return conn, broker.CloseWhenDone(ctx, conn), nil
}

// heldFor bounds the wait for messages that a lost connection held to be
// handed back: the broker notices a dead client within a few heartbeats.
const heldFor = 30 * time.Second

// reappears waits up to heldFor for the dead-letter queue of t to hold
// messages again, and reports whether it does.
func reappears(ctx context.Context, conn *amqp.Connection, t broker.Topology) bool {
	deadline := time.Now().Add(heldFor)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if n, _, err := List(ctx, conn, t, 0); err != nil || n > 0 {
			return err == nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	return false
}
