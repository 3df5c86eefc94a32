package brokertest

import (
	"os"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestCluster starts three nodes, joins them, and checks that a quorum
// queue declared on one is led by it and survives its SIGKILL with its
// messages, and that the node rejoins after a start.
func TestCluster(t *testing.T) {
	if os.Getenv("WARREN_CLUSTER") == "" {
		t.Skip("starts a three-node cluster: set WARREN_CLUSTER=short (make cluster-test)")
	}
	begin := time.Now()
	c := StartCluster(t, 3)
	t.Logf("3 nodes up and joined in %s", time.Since(begin).Round(100*time.Millisecond))
	if got := c.RunningNodes(t); len(got) != 3 {
		t.Fatalf("running nodes = %v, want 3", got)
	}
	// Declared through node 0, the queue is led by it.
	b := At(c.Nodes[0].URL())
	b.Declare(t, "q", amqp.Table{amqp.QueueTypeArg: "quorum"})
	b.Publish(t, "q", []string{"x"})
	if l := c.Leader(t, "q"); l != c.Nodes[0] {
		t.Fatalf("Leader(q) = %v, want %s", l, c.Nodes[0].Name)
	}
	kill := time.Now()
	c.Nodes[0].Kill(t)
	WaitFor(t, 30*time.Second, "a new leader", func() bool {
		l := c.Leader(t, "q")
		return l != nil && l != c.Nodes[0]
	})
	t.Logf("new leader %s after %s", c.Leader(t, "q").Name, time.Since(kill).Round(time.Millisecond))
	// The new leader reports the queue's length at its next tick.
	WaitFor(t, 30*time.Second, "q holding its message after its leader died", func() bool {
		return c.Messages(t)["q"] == 1
	})
	c.Nodes[0].Start(t)
	c.WaitRunning(t)
	t.Logf("node killed and back in the cluster in %s", time.Since(kill).Round(100*time.Millisecond))
}
