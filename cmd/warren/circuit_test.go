package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// TestOutageDeadLettersNothing is issue 15's goal: the HTTP endpoint is
// down (503) for an outage that, compressed by the retry delays
// (200ms,1s: a message's 5 attempts are used up in about 2.5 s), lasts
// 6 s, while messages keep arriving. With the circuit breaker none dies,
// none is lost, none is tried past its second attempt, /readyz says the
// circuit is open, and once the endpoint is back warren drains the
// backlog at full speed within 5 s. With WARREN_CIRCUIT=off, the same
// outage dead-letters messages: what the circuit prevents.
func TestOutageDeadLettersNothing(t *testing.T) {
	for _, circuit := range []string{"on", "off"} {
		t.Run("circuit "+circuit, func(t *testing.T) {
			q := brokertest.Queue(t)
			brokertest.DeleteAfter(t, q+".retry.200ms")
			e := warrentest.NewEndpoint(t, warrentest.EndpointOptions{})
			p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=http", "WARREN_HTTP_URL="+e.URL("w"),
				"WARREN_RETRY_DELAYS=200ms,1s", "WARREN_CIRCUIT="+circuit, "WARREN_CIRCUIT_WINDOW=10s",
				"WARREN_CIRCUIT_MAX_PROBE_INTERVAL=500ms"))
			p.waitStatus(t, "/readyz", http.StatusOK)

			// A producer publishes every 10 ms until told to stop.
			ch := brokertest.Channel(t)
			if err := ch.Confirm(false); err != nil {
				t.Fatal(err)
			}
			var (
				mu     sync.Mutex
				bodies []string
				pubErr error
			)
			stop := make(chan struct{})
			var producer sync.WaitGroup
			producer.Add(1)
			go func() {
				defer producer.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(10 * time.Millisecond):
					}
					body := fmt.Sprintf("m-%05d", i)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false,
						amqp.Publishing{Body: []byte(body), DeliveryMode: amqp.Persistent})
					if err == nil && !conf.Wait() {
						err = fmt.Errorf("publish %s: nacked", body)
					}
					cancel()
					mu.Lock()
					if err != nil {
						pubErr = err
					} else {
						bodies = append(bodies, body)
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
			stopProducer := func() []string {
				close(stop)
				producer.Wait()
				mu.Lock()
				defer mu.Unlock()
				if pubErr != nil {
					t.Fatalf("producer: %v", pubErr)
				}
				return bodies
			}

			time.Sleep(time.Second) // a second of normal work
			before := e.Stats().Requests
			e.SetMode(warrentest.Fail)
			outage := time.Now()
			if circuit == "on" {
				brokertest.WaitFor(t, 10*time.Second, "/readyz: circuit open", func() bool {
					code, body := p.status("/readyz")
					return code == http.StatusServiceUnavailable && strings.Contains(body, "circuit open: post: status 503")
				})
				t.Logf("circuit open %s into the outage", time.Since(outage).Round(time.Millisecond))
			}
			time.Sleep(6*time.Second - time.Since(outage))
			requestsDown := e.Stats().Requests - before
			backlog := brokertest.Ready(t, q)
			e.SetMode(warrentest.Answer)
			back := time.Now()
			bs := stopProducer()
			if circuit == "off" {
				brokertest.WaitFor(t, 20*time.Second, "messages dead without the circuit", func() bool {
					return brokertest.Ready(t, q+".dead") > 0
				})
				t.Logf("circuit off: %d of %d messages in %s", brokertest.Ready(t, q+".dead"), len(bs), q+".dead")
				return
			}
			brokertest.WaitFor(t, 20*time.Second, "every message handled", func() bool { return len(e.Missing(bs)) == 0 })
			drained := time.Since(back)
			if drained > 5*time.Second {
				t.Errorf("the backlog took %s to drain once the endpoint was back, want within 5s", drained)
			}
			_, metrics := p.status("/metrics")
			if n := brokertest.Ready(t, q+".dead"); n != 0 {
				t.Errorf("%s holds %d messages, want 0", q+".dead", n)
			}
			requests, attempt := e.Tries()
			if attempt > 2 {
				t.Errorf("a message reached attempt %d, want at most 2", attempt)
			}
			// The threshold, the handlers under way, and a probe every
			// 0.2-0.6 s: about 25; without the circuit, hundreds.
			if requestsDown > 40 {
				t.Errorf("%d requests during the outage, want at most 40", requestsDown)
			}
			if got := metricValue(metrics, "warren_circuit_openings_total"); got < 1 {
				t.Errorf("warren_circuit_openings_total = %v, want at least 1", got)
			}
			if got := metricValue(metrics, "warren_circuit_open"); got != 0 {
				t.Errorf("warren_circuit_open = %v after recovery, want 0", got)
			}
			p.waitStatus(t, "/readyz", http.StatusOK)
			st := e.Stats()
			t.Logf("%d messages published; %d requests during the 6 s outage, the most for one body %d, highest attempt %d; a backlog of %d drained %s after the endpoint came back (%.0f msg/s); duplicates %d",
				len(bs), requestsDown, requests, attempt, backlog, drained.Round(time.Millisecond), float64(backlog)/drained.Seconds(), st.Duplicates)
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
		})
	}
}
