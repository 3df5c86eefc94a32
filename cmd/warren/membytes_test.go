package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// TestMemoryBoundedInBytes: large messages whose handler fails, so that
// each is copied to a retry queue, are held within WARREN_MAX_INFLIGHT_BYTES,
// whatever the prefetch in messages: with the default concurrency the
// adaptive window starts at 5, which is 5 x 32 MiB before warren has seen
// a single body. Those beyond the budget are handed back and the window
// shrinks to 1; the Go runtime is told to keep its heap within twice the
// budget and 64 MiB, so that the garbage of receiving large bodies does
// not double the peak. Every message reaches the retry queue once; none
// is lost or handled twice.
func TestMemoryBoundedInBytes(t *testing.T) {
	const (
		n      = 6
		size   = 32 << 20
		budget = 32 << 20
		// The heap warren keeps to (memlimit.Decide without a cgroup),
		// and what lies outside it: the binary, stacks, the runtime's own,
		// pages freed and not yet returned.
		heap  = 2*budget + 64<<20
		slack = 48 << 20
		bound = heap + slack
	)
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, amqp.Table{amqp.QueueTypeArg: "classic"})
	bodies := make([]string, n)
	for i := range bodies {
		id := fmt.Sprintf("big-%02d.", i)
		bodies[i] = id + strings.Repeat("b", size-len(id))
	}
	brokertest.Publish(t, q, bodies...)
	bodies = nil

	p := warrentest.NewProcess(t, warrentest.ProcessConfig{Name: "warren", Binary: buildPlain(t), Env: append(brokerEnv(q),
		"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=false", "WARREN_RETRY_DELAYS=1m",
		"WARREN_MAX_INFLIGHT_BYTES=32Mi", "WARREN_LOG_LEVEL=warn")})
	p.Start(t)
	brokertest.WaitFor(t, 20*time.Second, "warren consuming", p.Ready) // the retry queue is declared
	var retried float64
	brokertest.WaitFor(t, 50*time.Second, "every message retried", func() bool {
		retried = metricValue(p.Metrics(), `warren_messages_total{outcome="retry"}`)
		return retried >= n
	})
	peak := warrentest.PeakRSS(t, p.Pid())
	handedBack := metricValue(p.Metrics(), `warren_messages_total{outcome="requeue"}`)
	p.Stop(t)

	t.Logf("%d messages of %d MiB, budget %d MiB: peak RSS %.1f MiB (bound %d MiB), %v handed back",
		n, size>>20, budget>>20, float64(peak)/(1<<20), bound>>20, handedBack)
	if peak > bound {
		t.Errorf("peak RSS %.1f MiB, want at most %d MiB: the heap's soft limit, %d MiB, and %d MiB",
			float64(peak)/(1<<20), bound>>20, heap>>20, slack>>20)
	}
	if retried != n {
		t.Errorf(`warren_messages_total{outcome="retry"} = %v, want %d: each message handled once`, retried, n)
	}
	if ready, unacked, _ := brokertest.Counts(t, q); ready != 0 || unacked != 0 {
		t.Errorf("%s holds %d ready and %d unacked messages, want none", q, ready, unacked)
	}
	seen := make(map[string]int)
	for _, d := range brokertest.Get(t, q+".retry.1m", -1) {
		id, _, _ := strings.Cut(string(d.Body[:min(16, len(d.Body))]), ".")
		seen[id]++
		if len(d.Body) != size {
			t.Errorf("retry copy of %s holds %d bytes, want %d", id, len(d.Body), size)
		}
	}
	for i := range n {
		if id := fmt.Sprintf("big-%02d", i); seen[id] != 1 {
			t.Errorf("%s is in the retry queue %d times, want once", id, seen[id])
		}
	}
}

// metricValue returns the value of sample (name and labels, as written)
// in a Prometheus text exposition, or -1 if it is not there.
func metricValue(metrics, sample string) float64 {
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}
