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
// each is copied to a retry queue, are held within WARREN_MAX_INFLIGHT_BYTES
// (plus what receiving one costs), whatever the prefetch in messages:
// with the default concurrency the adaptive window starts at 5, which is
// 5 x 32 MiB before warren has seen a single body. Every message reaches
// the retry queue once; none is lost or handled twice.
func TestMemoryBoundedInBytes(t *testing.T) {
	const (
		n      = 6
		size   = 32 << 20
		budget = 64 << 20
		// amqp091-go assembles a body by appending its frames to a buffer
		// one frame long: while the last frames arrive, the old buffer and
		// its successor (1.25x) are both live. The rest is the runtime,
		// the binary and the garbage the collector has not reclaimed yet.
		receiving = size * 9 / 4
		slack     = 48 << 20
		bound     = budget + receiving + slack
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
		"WARREN_MAX_INFLIGHT_BYTES=64Mi", "WARREN_LOG_LEVEL=warn")})
	p.Start(t)
	brokertest.WaitFor(t, 20*time.Second, "warren consuming", p.Ready) // the retry queue is declared
	var retried float64
	brokertest.WaitFor(t, 50*time.Second, "every message retried", func() bool {
		retried = metricValue(p.Metrics(), `warren_messages_total{outcome="retry"}`)
		return retried >= n
	})
	peak := warrentest.PeakRSS(t, p.Pid())
	p.Stop(t)

	t.Logf("%d messages of %d MiB, budget %d MiB: peak RSS %.1f MiB (bound %d MiB)", n, size>>20, budget>>20, float64(peak)/(1<<20), bound>>20)
	if peak > bound {
		t.Errorf("peak RSS %.1f MiB, want at most %d MiB: the budget, one message being received and %d MiB",
			float64(peak)/(1<<20), bound>>20, slack>>20)
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
