package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
)

// TestSIGTERMDuringMemoryAlarm: while a memory alarm has the broker block
// a command's connection, SIGTERM still ends the command within a few
// seconds, exit 1, saying what was confirmed and what is unconfirmed (its
// copy may have reached the queue, or not).
func TestSIGTERMDuringMemoryAlarm(t *testing.T) {
	n := brokertest.StartNode(t)
	q := brokertest.Name(t) // the node goes with the test: no clean-up
	ch := nodeChannel(t, n, q, q+".dead")
	if err := ch.Publish("", q+".dead", false, false, amqp.Publishing{Body: []byte("dead one")}); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 10*time.Second, "the dead message stored", func() bool {
		d, err := ch.QueueDeclarePassive(q+".dead", true, false, false, false, nil)
		return err == nil && d.Messages == 1
	})
	n.Ctl(t, "set_vm_memory_high_watermark", "0.0000001")
	env := []string{"WARREN_AMQP_URL=" + n.URL(), "WARREN_QUEUE=" + q, "WARREN_RETRY_DELAYS="}
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"publish", []string{"publish", "x"}, []string{"the broker blocks publishing (low on memory)",
			"published 0 of 1 messages (1 unconfirmed: it may or may not have reached the queue)", "interrupted"}},
		{"dead replay", []string{"dead", "replay"}, []string{"replayed 0 messages",
			"(1 unconfirmed: its copy may or may not have reached", "interrupted"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startWarren(t, env, tt.args...)
			brokertest.WaitFor(t, 30*time.Second, "the broker blocking warren's connection", func() bool {
				return strings.Contains(n.Ctl(t, "list_connections", "state"), "blocked")
			})
			p.signal(t, syscall.SIGTERM)
			start := time.Now()
			code := p.wait(t, 5*time.Second)
			out := p.out.String()
			if code != 1 {
				t.Errorf("warren %v exited %d after SIGTERM, want 1", tt.args, code)
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("warren %v said %q, want %q", tt.args, out, want)
				}
			}
			t.Logf("exited %d in %s: %s", code, time.Since(start).Round(time.Millisecond), out)
			brokertest.WaitFor(t, 15*time.Second, "warren's connection gone", func() bool {
				return !strings.Contains(n.Ctl(t, "list_connections", "state"), "blocked")
			})
		})
	}
}

// nodeChannel opens a channel to the test's own node n, closed when the
// test ends, and declares the durable queues named.
func nodeChannel(t *testing.T, n *brokertest.Node, queues ...string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range queues {
		if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	return ch
}
