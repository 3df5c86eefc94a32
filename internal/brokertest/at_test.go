package brokertest

import (
	"fmt"
	"net"
	"runtime"
	"slices"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// deadURL returns the URL of a port nobody listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return fmt.Sprintf("amqp://guest:guest@%s/", addr)
}

// TestAtQueueHelpers: declare, publish, count, drain and delete a queue
// through At, on the test broker and, as on a cluster with a node down,
// through a list whose first node does not answer.
func TestAtQueueHelpers(t *testing.T) {
	tests := []struct {
		name string
		give []string
	}{
		{name: "one node", give: []string{URL()}},
		{name: "first node down", give: []string{deadURL(t), URL()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := At(tt.give...)
			q := Queue(t)
			b.Declare(t, q, amqp.Table{amqp.QueueTypeArg: "quorum"})
			if got := QueueArgs(t, q)["x-queue-type"]; got != "quorum" {
				t.Errorf("x-queue-type of %s = %v, want quorum", q, got)
			}
			bodies := Bodies("at", 1200) // more than the publish window
			b.Publish(t, q, bodies)
			if got := b.Ready(t, q); got != len(bodies) {
				t.Errorf("Ready(%s) = %d after publishing %d, want %d", q, got, len(bodies), len(bodies))
			}
			if got := b.Drain(t, q); !slices.Equal(got, bodies) {
				t.Errorf("Drain(%s) = %d bodies, want the %d published, in order", q, len(got), len(bodies))
			}
			if got := b.Ready(t, q); got != 0 {
				t.Errorf("Ready(%s) = %d after Drain, want 0", q, got)
			}
			b.DeleteQueues(t, q)
			ch, closeConn := b.Channel(t)
			defer closeConn()
			if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err == nil {
				t.Errorf("%s still exists after DeleteQueues", q)
			}
		})
	}
}

// TestAtNoNodeAnswers: with no node answering, DeleteQueues (a cleanup)
// only logs, while a helper that must reach the broker fails the test.
func TestAtNoNodeAnswers(t *testing.T) {
	b := At(deadURL(t), deadURL(t))
	b.DeleteQueues(t, "warren-test.none")
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Ready(r, "warren-test.none")
	}()
	<-done
	if r.fatal == "" {
		t.Error("Ready with no node answering did not fail the test")
	}
	t.Logf("Ready with no node answering: %s", r.fatal)
}

// fatalRecorder records a Fatalf instead of failing the test.
type fatalRecorder struct {
	testing.TB
	fatal string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
