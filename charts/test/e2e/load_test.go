package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ledger counts every message: those the broker confirmed to the
// publisher, and every time the application (the sidecar, through the
// collector) was handed one.
type ledger struct {
	mu        sync.Mutex
	confirmed map[string][]string // scenario -> message ids, in order
	handled   map[string]int      // message id -> deliveries to the application
	byPod     map[string]int      // pod -> deliveries
	handledBy map[string][]string // message id -> the pods that handled it
	started   map[string]int      // message id -> calls the application began
	redeliv   map[string]int      // message id -> deliveries flagged redelivered
	returned  int                 // published but unroutable
}

func newLedger() *ledger {
	return &ledger{confirmed: map[string][]string{}, handled: map[string]int{}, byPod: map[string]int{},
		handledBy: map[string][]string{}, started: map[string]int{}, redeliv: map[string]int{}}
}

func (l *ledger) confirm(scenario, id string) {
	l.mu.Lock()
	l.confirmed[scenario] = append(l.confirmed[scenario], id)
	l.mu.Unlock()
}

func (l *ledger) handle(id, pod string, redelivered bool) {
	l.mu.Lock()
	l.handled[id]++
	l.byPod[pod]++
	l.handledBy[id] = append(l.handledBy[id], pod)
	if redelivered {
		l.redeliv[id]++
	}
	l.mu.Unlock()
}

// begin counts a call of the application for the message id, at its
// start: a call cut short (its pod stopped) and begun again elsewhere
// counts twice here, once in handled.
func (l *ledger) begin(id string) {
	l.mu.Lock()
	l.started[id]++
	l.mu.Unlock()
}

// tally is a scenario's count: messages confirmed, lost (confirmed, never
// handled), duplicates (deliveries beyond the first), calls begun again
// (restarted: the application began one more than once) and who handled
// them.
type tally struct {
	messages, lost, duplicates, redelivered int
	restarted                               int
	firstLost                               []string
	byPod                                   map[string]int // pod -> messages handled
}

func (l *ledger) tally(scenario string) tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	tl := tally{byPod: map[string]int{}}
	for _, id := range l.confirmed[scenario] {
		tl.messages++
		tl.redelivered += l.redeliv[id]
		tl.restarted += max(l.started[id]-1, 0)
		for _, pod := range l.handledBy[id] {
			tl.byPod[pod]++
		}
		switch n := l.handled[id]; {
		case n == 0:
			tl.lost++
			if len(tl.firstLost) < 5 {
				tl.firstLost = append(tl.firstLost, id)
			}
		case n > 1:
			tl.duplicates += n - 1
		}
	}
	return tl
}

// collector is the HTTP endpoint the sidecars hand each message to, on the
// pod network's gateway. A message whose id has slowMark in it takes the
// slow time (SetSlow) before it is answered and counted: a long handler
// call, as the application sees it.
type collector struct {
	srv  *http.Server
	url  string
	wg   sync.WaitGroup
	slow atomic.Int64 // nanoseconds

	mu    sync.Mutex
	onPod map[string]int // pod -> requests being answered
}

// slowMark in a message id makes its handling take the collector's slow
// time.
const slowMark = "-slow-"

// SetSlow sets how long a slow message's handling takes.
func (c *collector) SetSlow(d time.Duration) { c.slow.Store(int64(d)) }

// Inflight is the number of messages the application is handling.
func (c *collector) Inflight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.onPod {
		n += k
	}
	return n
}

// InflightOn is the number of messages the application in pod is
// handling.
func (c *collector) InflightOn(pod string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.onPod[pod]
}

// track counts a request from pod as being answered until the returned
// func is called.
func (c *collector) track(pod string) (done func()) {
	c.mu.Lock()
	c.onPod[pod]++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.onPod[pod]--
		c.mu.Unlock()
	}
}

func startCollector(t *testing.T, addr string, l *ledger) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("collector: %v", err)
	}
	c := &collector{url: "http://" + ln.Addr().String() + "/", onPod: map[string]int{}}
	c.srv = &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer c.track(r.Header.Get("X-Pod"))()
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l.begin(string(body))
			if strings.Contains(string(body), slowMark) {
				select {
				case <-time.After(time.Duration(c.slow.Load())):
				case <-r.Context().Done():
					// The caller gave up: not handled.
					return
				}
			}
			l.handle(string(body), r.Header.Get("X-Pod"), r.Header.Get("X-Redelivered") == "true")
			w.WriteHeader(http.StatusOK)
		}),
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		c.srv.Close()
		c.wg.Wait()
	})
	return c
}

// publisherName is the publisher's connection name in the broker.
const publisherName = "e2e-publisher"

// publisher publishes a steady stream of persistent messages to the queue,
// each with its own id, waits for each confirm and records the confirmed
// ones. A lost connection (the broker stopped) is dialled again until the
// load stops; a message whose confirm never came is not counted as sent.
type publisher struct {
	url, queue string
	rate       time.Duration // between messages
	ledger     *ledger
	logf       func(string, ...any)
}

// load is a running publisher; stop ends it.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *publisher) start(scenario string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ld.done)
		p.run(ctx, scenario)
	}()
	return ld
}

func (ld *load) stop() {
	ld.cancel()
	<-ld.done
}

func (p *publisher) run(ctx context.Context, scenario string) {
	seq := 0
	for ctx.Err() == nil {
		err := p.session(ctx, scenario, &seq)
		if err != nil && ctx.Err() == nil {
			p.logf("publisher: %v; dialling again", err)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// session publishes on one connection until it fails or ctx ends.
func (p *publisher) session(ctx context.Context, scenario string, seq *int) error {
	conn, err := amqp.DialConfig(p.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Properties: amqp.Table{"connection_name": publisherName}})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 16))
	tick := time.NewTicker(p.rate)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		*seq++
		id := fmt.Sprintf("%s-%06d", scenario, *seq)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		dc, err := ch.PublishWithDeferredConfirmWithContext(pctx, "", p.queue,
			true,  // mandatory: an unroutable message comes back
			false, // immediate
			amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte(id)})
		if err != nil {
			cancel()
			return fmt.Errorf("publish: %w", err)
		}
		acked, err := dc.WaitContext(pctx)
		cancel()
		if err != nil {
			return fmt.Errorf("confirm: %w", err)
		}
		returned := false
		for len(returns) > 0 {
			if r := <-returns; r.MessageId == id {
				returned = true
			}
		}
		switch {
		case returned:
			p.ledger.mu.Lock()
			p.ledger.returned++
			p.ledger.mu.Unlock()
		case acked:
			p.ledger.confirm(scenario, id)
		}
	}
}

// drain consumes what is left in the queue with the test's own consumer
// and counts it as handled: after helm uninstall no pod consumes, and the
// messages published meanwhile wait in the queue, not lost.
func drain(t *testing.T, url, queue string, l *ledger) int {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	n := 0
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
		if !ok {
			return n
		}
		l.handle(strings.TrimSpace(string(d.Body)), "test-drain", d.Redelivered)
		if err := d.Ack(false); err != nil {
			t.Fatalf("drain: ack: %v", err)
		}
		n++
	}
}
