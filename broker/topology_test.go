package broker_test

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

// exists reports whether queue exists on the test broker.
func exists(t *testing.T, queue string) bool {
	t.Helper()
	ch := brokertest.Channel(t)
	_, err := ch.QueueDeclarePassive(queue,
		true,  // durable
		false, // autoDelete
		false, // exclusive
		false, // noWait
		nil)
	return err == nil
}

// TestApplyStopsAtTheMainQueue: when Q itself is refused (it exists with
// another type), nothing of warren's own is left behind, so that the
// corrected type can be declared afterwards.
func TestApplyStopsAtTheMainQueue(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: broker.Quorum})
	topo := broker.Topology{Queue: q, QueueType: broker.Classic, Declare: true,
		RetryDelays: []time.Duration{time.Second, 10 * time.Second}}
	err := topo.Apply(brokertest.Channel(t))
	if err == nil || !strings.Contains(err.Error(), q) {
		t.Fatalf("Apply over a quorum %q as classic = %v, want an error naming it", q, err)
	}
	for _, name := range []string{topo.DeadQueue(), topo.RetryQueue(time.Second), topo.RetryQueue(10 * time.Second)} {
		if exists(t, name) {
			t.Errorf("after Q was refused, %q exists; want nothing of warren's declared", name)
		}
	}
	// The corrected type then goes through.
	topo.QueueType = broker.Quorum
	if err := topo.Apply(brokertest.Channel(t)); err != nil {
		t.Fatalf("Apply with the corrected type: %v", err)
	}
}

// TestApplyRefusedAdvice: the advice that comes with a 406 never tells a
// user to use one of warren's own queues as it is (a retry queue without
// its TTL and route back strands what it holds); for the user's queue it
// still may.
func TestApplyRefusedAdvice(t *testing.T) {
	for _, tt := range []struct {
		name     string
		occupied func(topo broker.Topology) string // the queue declared beforehand with other settings
		want     string
		notWant  string
	}{
		{
			name:     "retry queue",
			occupied: func(topo broker.Topology) string { return topo.RetryQueue(time.Second) },
			want:     "warren's own",
			notWant:  "WARREN_DECLARE=false",
		},
		{
			name:     "dead-letter queue",
			occupied: func(topo broker.Topology) string { return topo.DeadQueue() },
			want:     "warren's own",
			notWant:  "WARREN_DECLARE=false",
		},
		{
			name:     "main queue",
			occupied: func(topo broker.Topology) string { return topo.Queue },
			want:     "WARREN_DECLARE=false",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			topo := broker.Topology{Queue: q, QueueType: broker.Classic, Declare: true,
				RetryDelays: []time.Duration{time.Second}}
			name := tt.occupied(topo)
			// A quorum queue where warren wants a classic one.
			brokertest.DeclareQueue(t, name, amqp.Table{amqp.QueueTypeArg: broker.Quorum})
			err := topo.Apply(brokertest.Channel(t))
			if err == nil {
				t.Fatalf("Apply with %q occupied = nil, want a refusal", name)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) || (tt.notWant != "" && strings.Contains(msg, tt.notWant)) {
				t.Errorf("Apply with %q occupied = %q; want it to contain %q and not %q", name, msg, tt.want, tt.notWant)
			}
		})
	}
}
