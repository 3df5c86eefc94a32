package brokertest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestNodeLifecycle starts a node of the test's own, restarts its
// application and the node itself, and checks that a durable queue and its
// persistent messages survive, and that the machine's broker is untouched.
func TestNodeLifecycle(t *testing.T) {
	var before string
	if ok, _ := CanCtl(); ok {
		before = strings.TrimSpace(Ctl(t, "eval", "erlang:system_info(start_time)."))
	}
	begin := time.Now()
	n := StartNode(t)
	t.Logf("node %s up on %s in %s", n.Name, n.Addr(), time.Since(begin).Round(time.Millisecond))
	if !strings.Contains(n.Ctl(t, "status"), filepath.Dir(n.dir)) {
		t.Errorf("rabbitmqctl status does not name the node's own files in %s", n.dir)
	}

	const q = "warren-test.node"
	b := At(n.URL())
	b.Declare(t, q, nil)
	b.Publish(t, q, []string{"one"})
	n.StopApp(t)
	if _, err := amqp.Dial(n.URL()); err == nil {
		t.Errorf("dial %s after stop_app succeeded, want refused", n.Name)
	}
	n.StartApp(t)
	b.Publish(t, q, []string{"two"})
	n.Stop(t)
	n.Start(t)
	if got := b.Ready(t, q); got != 2 {
		t.Errorf("queue holds %d messages after restarts, want 2", got)
	}
	n.CloseAllConnections(t)

	if before != "" {
		if after := strings.TrimSpace(Ctl(t, "eval", "erlang:system_info(start_time).")); after != before {
			t.Errorf("the machine's broker restarted (start time %s, then %s); want it untouched", before, after)
		}
	}
	if _, err := os.Stat(filepath.Join(n.dir, "mnesia")); err != nil {
		t.Errorf("node data not under the test's directory: %v", err)
	}
}
