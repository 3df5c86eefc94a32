package brokertest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Broker is a broker given by URL, or the nodes of one cluster: a node of
// the test's own (StartNode, StartCluster) as much as the test broker.
// Each of its helpers opens a connection of its own to the first node that
// answers and closes it before returning: tests poll them, and a broker
// has only so many file descriptors.
type Broker struct {
	urls []string
}

// At returns the broker at urls, the nodes to try in turn.
func At(urls ...string) Broker { return Broker{urls: urls} }

func (b Broker) dial() (*amqp.Connection, error) {
	var errs []error
	for _, u := range b.urls {
		conn, err := amqp.Dial(u)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("no broker URL")
	}
	return nil, fmt.Errorf("no node answers: %w", errors.Join(errs...))
}

// Channel opens a channel on a connection of its own; closeConn closes
// that connection.
func (b Broker) Channel(t testing.TB) (ch *amqp.Channel, closeConn func()) {
	t.Helper()
	conn, err := b.dial()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ch, err = conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatalf("open channel: %v", err)
	}
	return ch, func() { conn.Close() }
}

// Ready returns the ready messages of queue, from a passive declaration:
// unlike rabbitmqctl list_queues, whose figures for a quorum queue come
// every few seconds, it is up to date.
func (b Broker) Ready(t testing.TB, queue string) int {
	t.Helper()
	ch, closeConn := b.Channel(t)
	defer closeConn()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %q: %v", queue, err)
	}
	return q.Messages
}

// Declare declares a durable queue with args, as warren does.
func (b Broker) Declare(t testing.TB, queue string, args amqp.Table) {
	t.Helper()
	ch, closeConn := b.Channel(t)
	defer closeConn()
	if _, err := ch.QueueDeclare(queue,
		true,  // durable
		false, // autoDelete
		false, // exclusive
		false, // noWait
		args); err != nil {
		t.Fatalf("declare queue %q: %v", queue, err)
	}
}

// DeleteQueues deletes the queues, ignoring those that do not exist; for
// a cleanup, it only logs when no node answers.
func (b Broker) DeleteQueues(t testing.TB, queues ...string) {
	t.Helper()
	conn, err := b.dial()
	if err != nil {
		t.Logf("delete queues: %v", err)
		return
	}
	defer conn.Close()
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			t.Logf("delete queue %q: %v", q, err)
			return
		}
		_, _ = ch.QueueDelete(q, false, false, false)
		ch.Close()
	}
}

// Drain takes every message of queue, acking them, and returns their
// bodies.
func (b Broker) Drain(t testing.TB, queue string) []string {
	t.Helper()
	ch, closeConn := b.Channel(t)
	defer closeConn()
	var bodies []string
	for _, d := range GetOn(t, ch, queue, -1) {
		bodies = append(bodies, string(d.Body))
	}
	return bodies
}

// publishWindow is how many messages Publish keeps unconfirmed at most.
const publishWindow = 500

// Publish publishes bodies to queue through the default exchange,
// persistent, each with its body as message id, with confirms, many in
// flight at once; it fails the test if the broker refuses one.
func (b Broker) Publish(t testing.TB, queue string, bodies []string) {
	t.Helper()
	ch, closeConn := b.Channel(t)
	defer closeConn()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	var pending []*amqp.DeferredConfirmation
	wait := func(dc *amqp.DeferredConfirmation) {
		if !dc.Wait() {
			t.Fatalf("publish: the broker refused a message")
		}
	}
	for _, body := range bodies {
		if len(pending) == publishWindow {
			wait(pending[0])
			pending = pending[1:]
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue,
			true,  // mandatory
			false, // immediate
			amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "text/plain", MessageId: body, Body: []byte(body)})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		pending = append(pending, dc)
	}
	for _, dc := range pending {
		wait(dc)
	}
}
