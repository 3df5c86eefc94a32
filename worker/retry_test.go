package worker_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// attemptLog records when each attempt at each body was made.
type attemptLog struct {
	mu    sync.Mutex
	times map[string][]time.Time
	nums  map[string][]int // Message.Attempt as the handler saw it
}

func newAttemptLog() *attemptLog {
	return &attemptLog{times: make(map[string][]time.Time), nums: make(map[string][]int)}
}

func (l *attemptLog) record(m *worker.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := string(m.Body)
	l.times[b] = append(l.times[b], time.Now())
	l.nums[b] = append(l.nums[b], m.Attempt)
}

func (l *attemptLog) get(body string) ([]time.Time, []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times[body]...), append([]int(nil), l.nums[body]...)
}

// checkGaps fails unless the gaps between attempts are at least want
// (the broker holds a message for its delay) and not far more.
func checkGaps(t *testing.T, times []time.Time, want []time.Duration) {
	t.Helper()
	if len(times) != len(want)+1 {
		t.Fatalf("%d attempts, want %d", len(times), len(want)+1)
	}
	const slack = 2 * time.Second // expiry runs on the broker's timer, under load
	for i, w := range want {
		got := times[i+1].Sub(times[i])
		if got < w-20*time.Millisecond || got > w+slack {
			t.Errorf("attempt %d came %s after attempt %d, want %s (up to %s more)", i+2, got.Round(time.Millisecond), i+1, w, slack)
		}
	}
}

// deadCopy waits for the single message warren dead-lettered from q and
// returns it.
func deadCopy(t *testing.T, q string) amqp.Delivery {
	t.Helper()
	brokertest.WaitFor(t, 20*time.Second, "a message in "+q+".dead", func() bool { return brokertest.Ready(t, q+".dead") >= 1 })
	ds := brokertest.Get(t, q+".dead", 10)
	if len(ds) != 1 {
		t.Fatalf("%s holds %d messages, want exactly 1", q+".dead", len(ds))
	}
	return ds[0]
}

func TestRetriesWaitInRetryQueuesThenDeadLetter(t *testing.T) {
	for _, qt := range []string{broker.Classic, broker.Quorum} {
		t.Run(qt, func(t *testing.T) {
			q := brokertest.Queue(t)
			log := newAttemptLog()
			h := start(t, worker.Config{
				Topology: broker.Topology{Queue: q, QueueType: qt, Declare: true,
					RetryDelays: []time.Duration{300 * time.Millisecond, 600 * time.Millisecond}},
				Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
					log.record(m)
					return errors.New("boom")
				}),
				MaxAttempts: 4,
			})
			h.waitReady(t)
			brokertest.PublishTo(t, "", q, "poison")

			d := deadCopy(t, q)
			times, nums := log.get("poison")
			checkGaps(t, times, []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 600 * time.Millisecond})
			if fmt.Sprint(nums) != "[1 2 3 4]" {
				t.Errorf("handler saw attempts %v, want [1 2 3 4]", nums)
			}
			if string(d.Body) != "poison" || d.MessageId != "poison" || d.DeliveryMode != amqp.Persistent {
				t.Errorf("dead copy = %q id %q mode %d, want the original body and id, persistent", d.Body, d.MessageId, d.DeliveryMode)
			}
			wantHeaders := map[string]any{
				broker.HeaderAttempts:   int64(4),
				broker.HeaderQueue:      q,
				broker.HeaderRoutingKey: q,
				broker.HeaderExchange:   "",
			}
			for k, want := range wantHeaders {
				if got := d.Headers[k]; got != want {
					t.Errorf("dead copy header %s = %#v, want %#v", k, got, want)
				}
			}
			reason, _ := d.Headers[broker.HeaderReason].(string)
			if !strings.Contains(reason, "boom") || !strings.Contains(reason, "4 attempts") {
				t.Errorf("dead copy reason = %q, want the last error and the attempts", reason)
			}
			if at, ok := d.Headers[broker.HeaderDiedAt].(time.Time); !ok || time.Since(at) > time.Minute {
				t.Errorf("dead copy %s = %v, want the time it died", broker.HeaderDiedAt, d.Headers[broker.HeaderDiedAt])
			}
			// An outcome is counted once its ack went out, which acks
			// coalesce for up to a few ms after the copy was confirmed.
			brokertest.WaitFor(t, 5*time.Second, "the dead message counted", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "dead") == 1
			})
			for name, want := range map[string]float64{
				"warren_messages_total|outcome|retry":           3,
				"warren_messages_total|outcome|dead":            1,
				"warren_retry_publishes_total|result|confirmed": 3,
				"warren_dead_publishes_total|result|confirmed":  1,
			} {
				parts := strings.Split(name, "|")
				if got := h.metric(t, parts[0], parts[1], parts[2]); got != want {
					t.Errorf("%s{%s=%q} = %v, want %v", parts[0], parts[1], parts[2], got, want)
				}
			}
			for _, name := range []string{q, q + ".retry.300ms", q + ".retry.600ms"} {
				if n := brokertest.Ready(t, name); n != 0 {
					t.Errorf("%s holds %d messages, want 0", name, n)
				}
			}
		})
	}
}

func TestPermanentFailureDeadLettersAtOnce(t *testing.T) {
	q := brokertest.Queue(t)
	rec := newRecorder(func(context.Context, *worker.Message, int) error {
		return worker.Permanent(errors.New("cannot parse order 42"))
	})
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}},
		Handler:  rec,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "bad")
	d := deadCopy(t, q)
	if got := d.Headers[broker.HeaderReason]; got != "cannot parse order 42" {
		t.Errorf("reason = %q, want the handler's error", got)
	}
	if got := d.Headers[broker.HeaderAttempts]; got != int64(1) {
		t.Errorf("attempts = %v, want 1", got)
	}
	if got := rec.calls(); got != 1 {
		t.Errorf("handler called %d times, want 1: a permanent failure is not retried", got)
	}
}

func TestRetryWithoutDelaysGoesToTheTail(t *testing.T) {
	q := brokertest.Queue(t)
	var mu sync.Mutex
	var order []string
	h := start(t, worker.Config{
		Topology: topology(q), // no retry delays
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			mu.Lock()
			order = append(order, fmt.Sprintf("%s#%d", m.Body, m.Attempt))
			mu.Unlock()
			if string(m.Body) == "bad" && m.Attempt == 1 {
				return errors.New("transient")
			}
			return nil
		}),
		Prefetch:    1,
		Concurrency: 1,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "bad", "a", "b")
	brokertest.WaitFor(t, 10*time.Second, "4 attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 4
	})
	mu.Lock()
	got := strings.Join(order, " ")
	mu.Unlock()
	if want := "bad#1 a#1 b#1 bad#2"; got != want {
		t.Errorf("handled %q, want %q: a retry goes behind what waits, counted", got, want)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	for _, tt := range []struct {
		name         string
		delays       []time.Duration
		after        time.Duration
		wantGap      time.Duration
		wantDeferred bool
	}{
		// The shortest retry queue that holds it long enough.
		{"a longer queue", []time.Duration{200 * time.Millisecond, time.Second}, 500 * time.Millisecond, time.Second, false},
		// Longer than any queue: it waits in the longest, as often as needed.
		{"beyond every queue", []time.Duration{200 * time.Millisecond}, 900 * time.Millisecond, 900 * time.Millisecond, true},
		// No retry queue: it waits in its handler slot, then goes to the tail.
		{"no retry queues", nil, 2 * time.Second, 2 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			log := newAttemptLog()
			h := start(t, worker.Config{
				Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: tt.delays},
				Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
					log.record(m)
					if m.Attempt == 1 {
						return worker.RetryAfter(errors.New("rate limited"), tt.after)
					}
					return nil
				}),
			})
			h.waitReady(t)
			brokertest.Publish(t, q, "m")
			brokertest.WaitFor(t, 10*time.Second, "the second attempt acked", func() bool {
				return h.metric(t, "warren_messages_total", "outcome", "ack") == 1
			})
			times, _ := log.get("m")
			checkGaps(t, times, []time.Duration{tt.wantGap})
			if deferred := h.metric(t, "warren_messages_total", "outcome", "deferred"); (deferred > 0) != tt.wantDeferred {
				t.Errorf("deferred %v times, want deferrals: %v", deferred, tt.wantDeferred)
			}
		})
	}
}

func TestRetryCopyUnconfirmedLosesNothing(t *testing.T) {
	q := brokertest.Queue(t)
	proxy := brokertest.NewProxy(t)
	rec := newRecorder(func(_ context.Context, _ *worker.Message, attempt int) error {
		if attempt == 1 {
			// The retry copy will reach the broker; its confirm will not
			// come back.
			proxy.StallFromBroker(true)
			return errors.New("transient")
		}
		return nil
	})
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{proxy.URL()}, Heartbeat: time.Second},
		Topology: topology(q),
		Handler:  rec,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "m")
	brokertest.WaitFor(t, 15*time.Second, "the dead link noticed", func() bool {
		return h.metric(t, "warren_connected") == 0
	})
	proxy.StallFromBroker(false)
	brokertest.WaitFor(t, 20*time.Second, "the message handled after the reconnect", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") >= 1
	})
	if got := h.metric(t, "warren_retry_publishes_total", "result", "failed"); got != 1 {
		t.Errorf("failed retry publishes = %v, want 1", got)
	}
	if got := h.metric(t, "warren_retry_publishes_total", "result", "confirmed"); got != 0 {
		t.Errorf("confirmed retry publishes = %v, want 0", got)
	}
	// The original came back (never acked), and so may the copy: handled
	// twice, never lost.
	brokertest.WaitFor(t, 10*time.Second, "the queue empty", func() bool {
		return brokertest.Ready(t, q) == 0 && h.metric(t, "warren_inflight_messages") == 0
	})
	t.Logf("handled %d times", rec.count("m"))
}

func TestHTTPHandlerOutcomes(t *testing.T) {
	var mu sync.Mutex
	hits := make(map[string][]time.Time)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := make([]byte, 64)
		n, _ := r.Body.Read(body)
		key := string(body[:n])
		mu.Lock()
		hits[key] = append(hits[key], time.Now())
		n = len(hits[key])
		mu.Unlock()
		if got := r.Header.Get("X-Warren-Attempt"); got != strconv.Itoa(n) {
			http.Error(w, "attempt header "+got, http.StatusExpectationFailed)
			return
		}
		switch key {
		case "ok":
			w.WriteHeader(http.StatusNoContent)
		case "bad-request":
			http.Error(w, "field x is missing", http.StatusBadRequest)
		case "rate-limited":
			if n == 1 {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "slow down", http.StatusTooManyRequests)
				return
			}
			w.WriteHeader(http.StatusOK)
		case "flaky":
			if n == 1 {
				http.Error(w, "try later", http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusOK)
		case "hang":
			<-r.Context().Done()
		}
	}))
	defer srv.Close()

	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology:       broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{200 * time.Millisecond}},
		Handler:        handler.NewHTTP(srv.URL, 4),
		HandlerTimeout: 300 * time.Millisecond,
		MaxAttempts:    3,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "ok", "bad-request", "rate-limited", "flaky", "hang")
	brokertest.WaitFor(t, 30*time.Second, "every message settled", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == 3 &&
			h.metric(t, "warren_messages_total", "outcome", "dead") == 2
	})
	gap := func(key string) time.Duration {
		mu.Lock()
		defer mu.Unlock()
		if len(hits[key]) < 2 {
			return 0
		}
		return hits[key][1].Sub(hits[key][0])
	}
	if g := gap("rate-limited"); g < time.Second {
		t.Errorf("429 with Retry-After: 1 was retried after %s, want at least 1s", g)
	}
	if g := gap("flaky"); g < 180*time.Millisecond || g > 3*time.Second {
		t.Errorf("503 was retried after %s, want the 200ms delay", g)
	}
	dead := brokertest.Get(t, q+".dead", 10)
	reasons := make(map[string]string)
	for _, d := range dead {
		reasons[string(d.Body)], _ = d.Headers[broker.HeaderReason].(string)
	}
	if r := reasons["bad-request"]; !strings.Contains(r, "400") || !strings.Contains(r, "field x is missing") {
		t.Errorf("400's dead reason = %q, want the status and the response body", r)
	}
	if r := reasons["hang"]; !strings.Contains(r, "3 attempts") || !strings.Contains(r, "deadline exceeded") {
		t.Errorf("hanging endpoint's dead reason = %q, want 3 attempts timed out", r)
	}
	mu.Lock()
	defer mu.Unlock()
	for key, want := range map[string]int{"ok": 1, "bad-request": 1, "rate-limited": 2, "flaky": 2, "hang": 3} {
		if got := len(hits[key]); got != want {
			t.Errorf("%s: %d requests, want %d", key, got, want)
		}
	}
}

func TestHTTPHandlerRefusedConnectionRetries(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology:    broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}},
		Handler:     handler.NewHTTP(url, 4),
		MaxAttempts: 2,
	})
	h.waitReady(t)
	brokertest.Publish(t, q, "m")
	d := deadCopy(t, q)
	if r, _ := d.Headers[broker.HeaderReason].(string); !strings.Contains(r, "connection refused") || !strings.Contains(r, "2 attempts") {
		t.Errorf("dead reason = %q, want connection refused after 2 attempts", r)
	}
	if got := h.metric(t, "warren_messages_total", "outcome", "retry"); got != 1 {
		t.Errorf("retries = %v, want 1", got)
	}
}

func TestExecHandlerOutcomes(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "handle.sh")
	// The body names what the command does; big bodies are counted.
	err := os.WriteFile(script, []byte(`#!/bin/sh
body=$(head -c 20)
case "$body" in
ok) exit 0 ;;
invalid) echo "no such customer" >&2; exit 3 ;;
fails) exit 1 ;;
stubborn) trap '' TERM; echo $$ > "$DIR/stubborn.pid"; sleep 300 ;;
nostdin) exit 0 ;;
*) rest=$(wc -c); [ $((rest + 20)) -eq 5242880 ] || exit 1 ;;
esac
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}},
		Handler: &handler.Exec{
			Command:       script,
			DeadExitCodes: []int{3},
			Grace:         200 * time.Millisecond,
			Env:           []string{"PATH=" + os.Getenv("PATH"), "DIR=" + dir},
		},
		HandlerTimeout: 500 * time.Millisecond,
		MaxAttempts:    2,
	})
	h.waitReady(t)
	big := strings.Repeat("x", 5<<20)
	brokertest.Publish(t, q, "ok", "invalid", "fails", "stubborn", "nostdin", big)
	// ok, nostdin and the 5 MiB body ack; invalid dies at once; fails and
	// stubborn die after 2 attempts.
	brokertest.WaitFor(t, 60*time.Second, "every message settled", func() bool {
		return h.metric(t, "warren_messages_total", "outcome", "ack") == 3 &&
			h.metric(t, "warren_messages_total", "outcome", "dead") == 3
	})
	reasons := make(map[string]string)
	for _, d := range brokertest.Get(t, q+".dead", 10) {
		reasons[string(d.Body)], _ = d.Headers[broker.HeaderReason].(string)
	}
	for body, want := range map[string]string{
		"invalid":  "dead code 3",
		"fails":    "exited with code 1",
		"stubborn": "deadline exceeded",
	} {
		if !strings.Contains(reasons[body], want) {
			t.Errorf("%s: dead reason %q, want it to say %q", body, reasons[body], want)
		}
	}
	if len(reasons) != 3 {
		t.Errorf("dead messages %v, want invalid, fails and stubborn", reasons)
	}
	// The command that ignored SIGTERM was killed, with all it started.
	pid, err := os.ReadFile(filepath.Join(dir, "stubborn.pid"))
	if err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 10*time.Second, "the stubborn command gone", func() bool {
		_, err := os.Stat("/proc/" + strings.TrimSpace(string(pid)))
		return os.IsNotExist(err)
	})
}

func TestTopologyForExistingQueues(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	// The queue of a pika-tutorial consumer: durable, no arguments.
	brokertest.DeclareQueue(t, q, nil)
	first := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Second}},
		Handler:  handler.Noop(),
	})
	first.waitReady(t)
	if err := first.stop(t); err != nil {
		t.Fatal(err)
	}
	// Other delays later: new retry queues join, the old one stays.
	second := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{2 * time.Second}},
		Handler:  handler.Noop(),
	})
	second.waitReady(t)
	if args := brokertest.QueueArgs(t, q); len(args) != 0 {
		t.Errorf("%s has arguments %v, want none, as its first client declared it: warren adds none to a queue it does not own", q, args)
	}
	for _, name := range []string{q + ".retry.1s", q + ".retry.2s"} {
		a := brokertest.QueueArgs(t, name)
		if a["x-dead-letter-routing-key"] != q || a["x-message-ttl"] == nil {
			t.Errorf("%s has arguments %v, want a TTL and a dead-letter route to %s", name, a, q)
		}
	}
}

func TestQuorumTopologyDeadLettersAtLeastOnce(t *testing.T) {
	brokertest.NeedCtl(t)
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, QueueType: broker.Quorum, Declare: true,
			RetryDelays: []time.Duration{time.Second}, DeliveryLimit: 3},
		Handler: handler.Noop(),
	})
	h.waitReady(t)
	for _, tt := range []struct {
		queue string
		want  map[string]any
	}{
		{q, map[string]any{"x-queue-type": "quorum", "x-delivery-limit": float64(3), "x-dead-letter-routing-key": q + ".dead",
			"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}},
		{q + ".retry.1s", map[string]any{"x-queue-type": "quorum", "x-message-ttl": float64(1000), "x-dead-letter-routing-key": q,
			"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}},
		{q + ".dead", map[string]any{"x-queue-type": "quorum"}},
	} {
		args := brokertest.QueueArgs(t, tt.queue)
		for k, want := range tt.want {
			if args[k] != want {
				t.Errorf("%s: %s = %#v, want %#v", tt.queue, k, args[k], want)
			}
		}
	}
}

// TestForeignDeathKeepsTheOrigin: a message that another system's
// dead-lettering marked with x-death keeps, on every attempt, the exchange
// and routing key it reached warren with.
func TestForeignDeathKeepsTheOrigin(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeleteAfter(t, q+".retry.100ms")
	var mu sync.Mutex
	var seen []string
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{100 * time.Millisecond}},
		Handler: worker.HandlerFunc(func(_ context.Context, m *worker.Message) error {
			mu.Lock()
			seen = append(seen, fmt.Sprintf("%d %q %q", m.Attempt, m.Exchange, m.RoutingKey))
			mu.Unlock()
			if m.Attempt == 1 {
				return errors.New("transient")
			}
			return nil
		}),
	})
	h.waitReady(t)
	publishHeadersTo(t, "", q, amqp.Table{"x-death": []any{amqp.Table{
		"exchange": "other-ex", "routing-keys": []any{"other.key"}, "queue": "other-queue",
		"reason": "rejected", "count": int64(1),
	}}}, "from elsewhere")
	brokertest.WaitFor(t, 10*time.Second, "the second attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 2
	})
	mu.Lock()
	defer mu.Unlock()
	want := []string{fmt.Sprintf("1 %q %q", "", q), fmt.Sprintf("2 %q %q", "", q)}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("attempts saw %q, want %q: x-death is another system's, not how the message reached warren", seen, want)
	}
}
