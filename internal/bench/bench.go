// Package bench measures warren against reference consumers on the same
// broker in the same run: drain rates, latency, the HTTP and exec handlers,
// publishing, and warren's peak memory.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/warrentest"
)

// Env is what every scenario needs.
type Env struct {
	URL    string // the broker
	Binary string // the warren binary
	Log    io.Writer
	// LinkCommand runs a link in a process of its own (slowlink.Serve)
	// for the link part; empty, the link runs in the benchmark's
	// process, beside the reference consumers it serves.
	LinkCommand []string
}

// Result is one measured run.
type Result struct {
	Rate     float64       // messages per second
	Duration time.Duration // the whole run
	PeakRSS  int64         // bytes; 0 when not measured
}

func (e Env) logf(format string, args ...any) {
	if e.Log != nil {
		fmt.Fprintf(e.Log, format+"\n", args...)
	}
}

func queueName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("warren-bench.%s.%x", prefix, b)
}

// Fill declares a durable queue of type qt named after prefix and publishes
// n persistent messages of size bytes to it, confirmed.
func (e Env) Fill(prefix, qt string, n, size int) (string, error) {
	q := queueName(prefix)
	conn, ch, err := e.channel(0)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: qt}); err != nil {
		return "", fmt.Errorf("declare %q: %w", q, err)
	}
	return q, publish(ch, q, n, size)
}

// PublishTo publishes n persistent messages of size bytes to q, confirmed.
func (e Env) PublishTo(q string, n, size int) error {
	conn, ch, err := e.channel(0)
	if err != nil {
		return err
	}
	defer conn.Close()
	return publish(ch, q, n, size)
}

// publish publishes n persistent messages of size bytes to q on ch,
// confirmed.
func publish(ch *amqp.Channel, q string, n, size int) error {
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	const window = 1000
	pending := make([]*amqp.DeferredConfirmation, 0, window)
	for i := 0; i < n; i++ {
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			if !pending[len(pending)-1].Wait() {
				return errors.New("publish not confirmed")
			}
			pending = pending[:0]
		}
	}
	for _, dc := range pending {
		if !dc.Wait() {
			return errors.New("publish not confirmed")
		}
	}
	return nil
}

// Delete deletes the queues.
func (e Env) Delete(queues ...string) {
	conn, err := amqp.Dial(e.URL)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range queues {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(q, false, false, false)
			ch.Close()
		}
	}
}

// PlainDrain consumes n messages from q as a plain amqp091-go consumer:
// prefetch, and an ack with multiple=true every ackEvery messages. The
// queue's depth is watched meanwhile as in warren's runs, so that both
// bear the watcher's cost on the broker.
func (e Env) PlainDrain(q string, n, prefetch, ackEvery int) (Result, error) {
	conn, ch, err := e.channel(prefetch)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	depth, err := e.watchDepth(q)
	if err != nil {
		return Result{}, err
	}
	defer depth.close()
	watched := make(chan struct{})
	defer func() { <-watched }()
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	// The same reads of the broker as during warren's runs, at the same
	// pace, so that their cost weighs on both alike.
	go func() {
		defer close(watched)
		wait := pollEvery
		for {
			select {
			case <-stop:
				return
			case <-time.After(wait):
				r, err := depth.ready()
				if err != nil {
					r = n
				}
				wait = nextPoll(n-r, r, time.Since(start))
			}
		}
	}()
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return Result{}, fmt.Errorf("consume: %w", err)
	}
	got := 0
	for d := range ds {
		got++
		if got%ackEvery == 0 || got == n {
			if err := d.Ack(true); err != nil {
				return Result{}, fmt.Errorf("ack: %w", err)
			}
		}
		if got == n {
			break
		}
	}
	took := time.Since(start)
	return Result{Rate: float64(n) / took.Seconds(), Duration: took}, nil
}

// pollEvery is how often a run's progress is looked at near its end:
// its end is known to within that.
const pollEvery = 5 * time.Millisecond

// maxPollEvery is the longest wait between two looks at a run's
// progress.
const maxPollEvery = 100 * time.Millisecond

// nextPoll returns how long to wait before the next look at a run that
// has done done messages in elapsed, with left to go: a quarter of the
// time the rest should take at the rate so far, between pollEvery and
// maxPollEvery. Each look costs the broker a call into the queue and
// the benchmark CPU on the cores the run shares: every 5 ms, that was a
// tenth of a core through a 2,000-message drain of the exec handler,
// which needs them all. Looking more often as the end nears keeps the end
// known to within pollEvery.
func nextPoll(done, left int, elapsed time.Duration) time.Duration {
	if done <= 0 || left <= 0 {
		return pollEvery
	}
	rest := time.Duration(float64(elapsed) * float64(left) / float64(done))
	return min(max(rest/4, pollEvery), maxPollEvery)
}

// depthWatch reads a queue's count of ready messages from the broker, on a
// connection of its own.
type depthWatch struct {
	q    string
	conn *amqp.Connection
	ch   *amqp.Channel
}

func (e Env) watchDepth(q string) (*depthWatch, error) {
	conn, ch, err := e.channel(0)
	if err != nil {
		return nil, err
	}
	return &depthWatch{q: q, conn: conn, ch: ch}, nil
}

// channel connects to the broker and opens a channel with prefetch, if
// not 0.
func (e Env) channel(prefetch int) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.Dial(e.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	ch, err := conn.Channel()
	if err == nil && prefetch > 0 {
		err = ch.Qos(prefetch, 0, false)
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	return conn, ch, nil
}

func (w *depthWatch) ready() (int, error) {
	qi, err := w.ch.QueueDeclarePassive(w.q, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("read depth of %q: %w", w.q, err)
	}
	return qi.Messages, nil
}

func (w *depthWatch) close() { w.conn.Close() }

// Drained reports the messages of a queue filled with n that its consumer
// has received: what the broker no longer holds ready.
func (e Env) Drained(q string, n int) (progress func() (int, error), stop func(), err error) {
	w, err := e.watchDepth(q)
	if err != nil {
		return nil, nil, err
	}
	return func() (int, error) {
		r, err := w.ready()
		return n - r, err
	}, w.close, nil
}

// Warren runs the warren binary on queue q with env until progress says n
// messages are handled and its metrics confirm that n are settled; the
// rate counts from the moment it was ready, and its peak resident memory
// is read at the end. progress is polled as nextPoll says and must cost
// warren nothing: a scrape of /metrics costs it about 1.6 ms of CPU, which
// at that pace would take a sixth of a core from the run measured, so
// /metrics is read only at the start and the end.
func (e Env) Warren(q string, env []string, n int, progress func() (int, error)) (Result, error) {
	w, err := e.startWarren(q, env)
	if err != nil {
		return Result{}, err
	}
	defer w.stop()
	deadline := time.Now().Add(10 * time.Minute)
	var start time.Time
	var startCount float64
	wait := pollEvery
	for {
		if time.Now().After(deadline) {
			return Result{}, errors.New("warren did not finish in 10 minutes")
		}
		if err := w.exitErr(); err != nil {
			return Result{}, err
		}
		switch {
		case start.IsZero():
			if w.ready() {
				start = time.Now()
				startCount, _ = settled(w.base)
			}
		default:
			done, err := progress()
			if err != nil {
				return Result{}, err
			}
			if done < n {
				wait = nextPoll(done, n-done, time.Since(start))
				break
			}
			if c, err := settled(w.base); err == nil && c >= float64(n) {
				took := time.Since(start)
				return Result{Rate: (float64(n) - startCount) / took.Seconds(), Duration: took, PeakRSS: peakRSS(w.cmd.Process.Pid)}, nil
			}
			wait = pollEvery
		}
		time.Sleep(wait)
	}
}

// warrenProcess is a warren binary running on a queue.
type warrenProcess struct {
	cmd    *exec.Cmd
	base   string // of its health server
	exited chan error
}

// startWarren starts the warren binary on queue q with env, on top of
// the benchmark's own settings; stop stops it.
func (e Env) startWarren(q string, env []string) (*warrenProcess, error) {
	addr, err := warrentest.FreeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.Binary)
	cmd.Env = append(append(warrentest.Env(""), "WARREN_AMQP_URL="+e.URL, "WARREN_QUEUE="+q,
		"WARREN_HEALTH_ADDR="+addr, "WARREN_LOG_LEVEL=warn"), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start warren: %w", err)
	}
	w := &warrenProcess{cmd: cmd, base: "http://" + addr, exited: make(chan error, 1)}
	go func() { w.exited <- cmd.Wait() }()
	return w, nil
}

// exitErr returns an error if the process has exited.
func (w *warrenProcess) exitErr() error {
	select {
	case err := <-w.exited:
		w.exited <- err // for stop
		return fmt.Errorf("warren exited: %v", err)
	default:
		return nil
	}
}

// ready reports whether warren says it is ready.
func (w *warrenProcess) ready() bool {
	resp, err := http.Get(w.base + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop asks warren to stop, kills it after 30 s, and waits for it.
func (w *warrenProcess) stop() {
	_ = w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.exited
	}
}

// settled returns the messages warren has settled, from its metrics.
func settled(base string) (float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "warren_messages_total{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// peakRSS reads a process's peak resident set size.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// HTTPServer is a local endpoint that answers 204 at once and counts, and
// when the request carries X-Warren-Header-X-Sent (Unix nanoseconds),
// records the latency since. A request to a URL of Slow answers after its
// delay, and is counted for the caller it names.
type HTTPServer struct {
	URL   string
	count atomic.Int64
	mu    sync.Mutex
	lat   []time.Duration
	by    map[string]*callerStats
	srv   *http.Server
	done  chan struct{}
}

// callerStats is what one caller of the slow URLs asked and was
// answered.
type callerStats struct {
	arrivals []time.Time
	answered int
}

// StartHTTP starts an HTTPServer; Close stops it.
func StartHTTP() (*HTTPServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &HTTPServer{URL: "http://" + ln.Addr().String() + "/", by: make(map[string]*callerStats), done: make(chan struct{})}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if who := r.URL.Query().Get("who"); who != "" {
		s.mu.Lock()
		c := s.by[who]
		if c == nil {
			c = &callerStats{}
			s.by[who] = c
		}
		c.arrivals = append(c.arrivals, time.Now())
		s.mu.Unlock()
		delay, _ := time.ParseDuration(r.URL.Query().Get("delay"))
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		s.mu.Lock()
		c.answered++
		s.mu.Unlock()
	}
	if v := r.Header.Get("X-Warren-Header-X-Sent"); v != "" {
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			d := time.Since(time.Unix(0, ns))
			s.mu.Lock()
			s.lat = append(s.lat, d)
			s.mu.Unlock()
		}
	}
	s.count.Add(1)
	w.WriteHeader(http.StatusNoContent)
}

// Handled returns a progress function for Warren: the requests served
// since it was called.
func (s *HTTPServer) Handled() func() (int, error) {
	base := s.count.Load()
	return func() (int, error) { return int(s.count.Load() - base), nil }
}

// Slow returns a URL whose requests are answered after delay, and
// counted for who (unique per caller).
func (s *HTTPServer) Slow(who string, delay time.Duration) string {
	return s.URL + "?who=" + url.QueryEscape(who) + "&delay=" + delay.String()
}

// Caller returns how many requests who made to its Slow URL were
// answered, and when each arrived.
func (s *HTTPServer) Caller(who string) (answered int, arrivals []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.by[who]; c != nil {
		return c.answered, slices.Clone(c.arrivals)
	}
	return 0, nil
}

// Close stops the server.
func (s *HTTPServer) Close() {
	_ = s.srv.Close()
	<-s.done
}

// Latencies returns and clears the latencies recorded.
func (s *HTTPServer) Latencies() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lat
	s.lat = nil
	return l
}

// BareHTTP posts n bodies of size bytes to url from concurrency goroutines
// with one keep-alive client: what the HTTP handler is compared with.
func BareHTTP(url string, n, size, concurrency int) (Result, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = concurrency
	client := &http.Client{Transport: t}
	body := make([]byte, size)
	return parallel(n, concurrency, func() error {
		resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	})
}

// BareExec runs argv n times, concurrency at a time, each with a body of
// size bytes on its stdin and its output discarded, from a bare Go loop
// with no broker: what the machine gives commands run side by side.
func BareExec(n, size, concurrency int, argv ...string) (Result, error) {
	body := make([]byte, size)
	return parallel(n, concurrency, func() error {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin = bytes.NewReader(body)
		return cmd.Run()
	})
}

// parallel calls do n times from concurrency goroutines, and stops at
// the first error.
func parallel(n, concurrency int, do func() error) (Result, error) {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := do(); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	return Result{Rate: float64(n) / took.Seconds(), Duration: took}, firstErr
}

// PlainHTTP drains n messages from q as a hand-written consumer would
// hand them to an HTTP endpoint: prefetch, concurrency goroutines reading
// the deliveries, a POST per message, an ack per message once it is
// answered. It is warren's HTTP handler without retries, dead letters,
// timeouts or headers.
func (e Env) PlainHTTP(q, url string, n, prefetch, concurrency int) (Result, error) {
	conn, ch, err := e.channel(prefetch)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = concurrency
	client := &http.Client{Transport: t}
	start := time.Now()
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return Result{}, fmt.Errorf("consume: %w", err)
	}
	var got atomic.Int64
	var firstErr error
	var once, finish sync.Once
	all := make(chan struct{})
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range ds {
				resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(d.Body))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					err = d.Ack(false)
				}
				if err != nil {
					once.Do(func() { firstErr = err })
				}
				if got.Add(1) == int64(n) || err != nil {
					finish.Do(func() { close(all) })
				}
			}
		}()
	}
	<-all
	took := time.Since(start)
	conn.Close() // ends the deliveries, and the goroutines with them
	wg.Wait()
	return Result{Rate: float64(n) / took.Seconds(), Duration: took}, firstErr
}

// AMQPConsume drains n messages from q with Debian's amqp-consume running
// the program argv per message, directly, not through a shell.
func (e Env) AMQPConsume(q string, n int, argv ...string) (Result, error) {
	u, err := amqp.ParseURI(e.URL)
	if err != nil {
		return Result{}, err
	}
	// amqp-consume: no trailing slash (it would name the empty vhost).
	url := fmt.Sprintf("amqp://%s:%s@%s:%d", u.Username, u.Password, u.Host, u.Port)
	start := time.Now()
	cmd := exec.Command("amqp-consume", append([]string{"--url=" + url, "-q", q, "-c", strconv.Itoa(n), "--"}, argv...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("amqp-consume: %w: %s", err, out)
	}
	took := time.Since(start)
	return Result{Rate: float64(n) / took.Seconds(), Duration: took}, nil
}

// tutorialWorker is the pika tutorial's consumer, made to stop after n.
//
//go:embed tutorial_worker.py
var tutorialWorker string

// PikaPython returns a Python interpreter that has pika (Debian's
// python3-pika), or "" if there is none.
func PikaPython() string {
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import pika").Run() == nil {
			return p
		}
	}
	return ""
}

// PikaTutorial drains n messages from q with the pika tutorial's consumer
// run by python, the interpreter PikaPython found. Its rate counts from
// its start_consuming, as warren's counts from its readiness.
func (e Env) PikaTutorial(python, q string, n int) (Result, error) {
	out, err := exec.Command(python, "-c", tutorialWorker, e.URL, q, strconv.Itoa(n)).CombinedOutput()
	if err != nil {
		return Result{}, fmt.Errorf("pika tutorial: %w: %s", err, out)
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || secs <= 0 {
		return Result{}, fmt.Errorf("pika tutorial: no time in %q", out)
	}
	took := time.Duration(secs * float64(time.Second))
	return Result{Rate: float64(n) / secs, Duration: took}, nil
}

// Publish runs warren publish -count n and times it.
func (e Env) Publish(q string, n int) (Result, error) {
	start := time.Now()
	cmd := exec.Command(e.Binary, "publish", "-count", strconv.Itoa(n), strings.Repeat("x", 100))
	cmd.Env = append(warrentest.Env(""), "WARREN_AMQP_URL="+e.URL, "WARREN_QUEUE="+q, "WARREN_RETRY_DELAYS=", "WARREN_LOG_LEVEL=warn")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("warren publish: %w: %s", err, out)
	}
	took := time.Since(start)
	return Result{Rate: float64(n) / took.Seconds(), Duration: took}, nil
}

// Paced publishes n messages to q at rate messages per second, each with
// an x-sent header holding the time it was sent. It starts once q has a
// consumer: what it measures is a running consumer's latency, not how long
// a process takes to start (warren's start, under 100 ms, was most of its
// p99 when the first messages waited for it).
func (e Env) Paced(ctx context.Context, q string, rate, n int) error {
	conn, ch, err := e.channel(0)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := awaitConsumer(ctx, ch, q); err != nil {
		return err
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		// Each message at its time: a ticker would drop ticks when late.
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
		err := ch.Publish("", q, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			Headers:      amqp.Table{"x-sent": strconv.FormatInt(time.Now().UnixNano(), 10)},
			Body:         make([]byte, 100),
		})
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	return nil
}

// awaitConsumer returns once q has a consumer.
func awaitConsumer(ctx context.Context, ch *amqp.Channel, q string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("read consumers of %q: %w", q, err)
		}
		if qi.Consumers > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no consumer on %q: %w", q, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// PlainLatency consumes n messages from q like PlainDrain's consumer, acking
// each, and records the latency from each message's x-sent header.
func (e Env) PlainLatency(ctx context.Context, q string, prefetch, n int) ([]time.Duration, error) {
	conn, ch, err := e.channel(prefetch)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return nil, err
	}
	var lat []time.Duration
	for {
		select {
		case <-ctx.Done():
			return lat, nil
		case d, ok := <-ds:
			if !ok {
				return lat, nil
			}
			if v, ok := d.Headers["x-sent"].(string); ok {
				if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
					lat = append(lat, time.Since(time.Unix(0, ns)))
				}
			}
			_ = d.Ack(false)
			if len(lat) == n {
				return lat, nil
			}
		}
	}
}

// Percentile returns the p-th percentile of ds (p in 0..100).
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// Median returns the median rate of rs.
func Median(rs []Result) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = r.Rate
	}
	return median(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// MaxRSS returns the highest peak RSS of rs.
func MaxRSS(rs []Result) int64 {
	var m int64
	for _, r := range rs {
		m = max(m, r.PeakRSS)
	}
	return m
}
