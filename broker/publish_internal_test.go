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
