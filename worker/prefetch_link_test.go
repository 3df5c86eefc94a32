package worker_test

import (
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/slowlink"
	"github.com/warren-mq/warren/worker"
)

// TestAdaptivePrefetchOverASlowLink runs a backlog through fast handlers
// over a link with a round trip of 100 ms, as between regions: a window
// of 4 then arrives in bursts a round trip apart, and the window must
// still grow to what the link's bandwidth-delay product needs, within a
// few round trips of consuming, with every message handled once.
func TestAdaptivePrefetchOverASlowLink(t *testing.T) {
	const oneWay = 50 * time.Millisecond
	link, err := slowlink.Start(brokertest.URL(), oneWay)
	if err != nil {
		t.Fatalf("start link: %v", err)
	}
	t.Cleanup(link.Close)
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	bodies := brokertest.Bodies("m", 3000)
	brokertest.Publish(t, q, bodies...)

	rec := newRecorder(nil)
	h := start(t, worker.Config{
		Dialer:      &broker.Dialer{URLs: []string{link.URL()}, Name: brokertest.Name(t)},
		Topology:    broker.Topology{Queue: q, Declare: true},
		Handler:     rec,
		Concurrency: 4,
	})
	// 256 in flight over 100 ms is 2,560 messages a second: a window of 4
	// gives 40.
	const want = 256
	var first, grown time.Time
	brokertest.WaitFor(t, 30*time.Second, "a window of 256 or more", func() bool {
		for _, e := range h.logs.FilterMessage("consuming").All() {
			if first.IsZero() {
				first = e.Time
			}
			if int(e.ContextMap()["prefetch"].(int64)) >= want {
				grown = e.Time
				return true
			}
		}
		return false
	})
	// Two steps (4, 32, 256), each judged over two round trips and taking
	// three (the cancel, basic.qos, basic.consume): 1.1 s here, under the
	// race detector. Judged by 25 ms samples, each a burst or nothing,
	// the window grew only when a burst happened to straddle two of
	// them: after 2.9 s to 22 s in six runs.
	if took := grown.Sub(first); took > 2500*time.Millisecond {
		t.Errorf("the window reached %d %v after consuming began, want within 2.5 s", want, took.Round(time.Millisecond))
	} else {
		t.Logf("the window reached %d %v after consuming began", want, took.Round(time.Millisecond))
	}
	for _, e := range h.logs.FilterMessage("changing prefetch").All() {
		if rt := e.ContextMap()["round_trip"].(time.Duration); rt < 2*oneWay {
			t.Errorf("a switch judged a round trip of %v over a link of %v", rt, 2*oneWay)
		}
	}

	brokertest.WaitFor(t, time.Minute, "every message handled", func() bool { return rec.distinct() == len(bodies) })
	if missing := rec.missing(bodies); len(missing) > 0 {
		t.Errorf("%d messages never handled, such as %q", len(missing), missing[0])
	}
	rec.mu.Lock()
	calls := rec.total
	rec.mu.Unlock()
	if calls != len(bodies) {
		t.Errorf("handler called %d times for %d messages, want each once", calls, len(bodies))
	}
}
