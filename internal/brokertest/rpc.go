package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// RPCClient is the requester of the pika tutorial's RPC: it consumes a
// callback queue of its own and sends requests that name it in reply_to,
// each with a correlation id of its own.
type RPCClient struct {
	ch *amqp.Channel
	// ReplyTo is what its requests carry in reply_to.
	ReplyTo string
	replies <-chan amqp.Delivery
}

// NewRPCClient returns a requester with an exclusive, server-named
// callback queue, as in the tutorial. It closes when the test ends.
func NewRPCClient(t testing.TB) *RPCClient {
	t.Helper()
	ch := Channel(t)
	q, err := ch.QueueDeclare("",
		false, // durable
		false, // autoDelete
		true,  // exclusive
		false, // noWait
		nil)
	if err != nil {
		t.Fatalf("declare the callback queue: %v", err)
	}
	return newRPCClient(t, ch, q.Name, q.Name)
}

// NewDirectRPCClient returns a requester that uses RabbitMQ's direct
// reply-to: it consumes amq.rabbitmq.reply-to, without acks, and
// publishes its requests on the same channel.
func NewDirectRPCClient(t testing.TB) *RPCClient {
	t.Helper()
	return newRPCClient(t, Channel(t), "amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to")
}

func newRPCClient(t testing.TB, ch *amqp.Channel, queue, replyTo string) *RPCClient {
	t.Helper()
	replies, err := ch.Consume(queue, "",
		true,  // autoAck: direct reply-to requires it
		false, // exclusive
		false, // noLocal
		false, // noWait
		nil)
	if err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	return &RPCClient{ch: ch, ReplyTo: replyTo, replies: replies}
}

// Call publishes body to queue through the default exchange with the
// client's reply_to and a new correlation id, in delivery mode mode
// (amqp.Persistent or amqp.Transient), and returns the id.
func (c *RPCClient) Call(t testing.TB, queue, body string, mode uint8) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.ch.PublishWithContext(ctx, "", queue,
		false, // mandatory
		false, // immediate
		amqp.Publishing{Body: []byte(body), ContentType: "text/plain", ReplyTo: c.ReplyTo, CorrelationId: id, DeliveryMode: mode})
	if err != nil {
		t.Fatalf("publish the request: %v", err)
	}
	return id
}

// Reply returns the next reply, or false if none comes within timeout.
func (c *RPCClient) Reply(t testing.TB, timeout time.Duration) (amqp.Delivery, bool) {
	t.Helper()
	select {
	case d, ok := <-c.replies:
		return d, ok
	case <-time.After(timeout):
		return amqp.Delivery{}, false
	}
}
