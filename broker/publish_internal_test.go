package broker

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
)

// TestPublisherKeepsNoReturnsOfAbandonedWaits gives up on the confirms of
// unroutable publishes before they arrive: their returns must not be kept.
func TestPublisherKeepsNoReturnsOfAbandonedWaits(t *testing.T) {
	p, err := NewPublisher(brokertest.Dial(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	gone := brokertest.Name(t) // no queue has this name
	abandoned, cancel := context.WithCancel(context.Background())
	cancel()
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	for range 100 {
		m, err := p.Send(ctx, "", gone, amqp.Publishing{MessageId: "order-42", Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Wait(abandoned, m); err == nil {
			t.Fatal("Wait with an ended context = nil, want its error")
		}
	}
	// The returns of the abandoned publishes came before this one's.
	if err := p.Publish(ctx, "", gone, amqp.Publishing{MessageId: "order-42"}); err != ErrUnroutable {
		t.Fatalf("Publish to no queue = %v, want ErrUnroutable", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.pending); n != 0 {
		t.Errorf("publisher keeps %d entries after every wait ended, want 0", n)
	}
}

// TestPublisherClosedAfterConfirm closes the publisher's channel between
// the broker's confirm of a routed publish and the Wait for it: amqp091-go
// then closes the returns, and a closed channel of returns says nothing of
// the publish. It was confirmed and not returned: Wait says so, where
// warren publish -reply's own reading of the returns (before it used the
// Publisher) called such a request unroutable.
func TestPublisherClosedAfterConfirm(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	p, err := NewPublisher(brokertest.Dial(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	m, err := p.Send(ctx, "", q, amqp.Publishing{Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.dc.Done():
	case <-ctx.Done():
		t.Fatal("no confirm within 30s")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Wait(ctx, m); err != nil {
		t.Fatalf("Wait for a routed publish confirmed before its channel closed = %v, want nil", err)
	}
}
