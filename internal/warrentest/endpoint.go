package warrentest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Mode is how an Endpoint answers.
type Mode int32

// Endpoint modes.
const (
	Answer Mode = iota // after its work: 204, 422 or 503 by the body
	Fail               // 503 at once
	Hang               // nothing until the client gives up (30 s at most)
)

// EndpointOptions shape an Endpoint.
type EndpointOptions struct {
	// Work is how long a request takes before its answer.
	Work time.Duration
	// Rate, if above 0, is the limit the endpoint starts with; see Limit.
	Rate float64
}

// EndpointStats are what an Endpoint counted so far.
type EndpointStats struct {
	Requests    int // every request
	OKs         int // answered 2xx
	Redelivered int // came with X-Warren-Redelivered: true
	// Duplicates is how many 2xx answers were for bodies answered 2xx
	// before: messages handled more than once.
	Duplicates int
}

// Endpoint is the HTTP server that warren processes post their messages
// to, in the fault, cluster and end-to-end suites: it records every body
// and answers 204 after its work. Bodies that start with "poison-" get
// 422 (the message is dead); those that start with "flaky-" get 503 on
// their first attempt (it is retried). While limited, it works on one
// request at a time, as a downstream service with a capacity does, so
// that a backlog lasts through the faults; a request waits its turn, and
// leaves the line when its client gives up.
type Endpoint struct {
	srv  *httptest.Server
	work time.Duration
	line chan struct{} // one request at a time while limited
	mode atomic.Int32

	mu          sync.Mutex
	hold        time.Duration // how long a request holds the line; 0: no line
	requests    map[string]int
	attempt     int            // the highest X-Warren-Attempt seen
	acked       map[string]int // 2xx answered
	redelivered int
	inflight    map[string]int // requests being answered, by URL path
	total, oks  int
	last        time.Time // of the last request
}

// NewEndpoint starts an Endpoint, closed when the test ends.
func NewEndpoint(t testing.TB, o EndpointOptions) *Endpoint {
	t.Helper()
	e := &Endpoint{work: o.Work, line: make(chan struct{}, 1),
		requests: map[string]int{}, acked: map[string]int{}, inflight: map[string]int{}}
	e.Limit(o.Rate)
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	return e
}

// URL returns the URL the process named name posts to: Busy tells its
// requests apart.
func (e *Endpoint) URL(name string) string { return e.srv.URL + "/" + name }

// Limit sets how many messages per second the endpoint takes; 0 lifts the
// limit.
func (e *Endpoint) Limit(rate float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hold = 0
	if rate > 0 {
		e.hold = time.Duration(float64(time.Second) / rate)
	}
}

// SetMode makes the endpoint answer the requests that come from now on
// as m says.
func (e *Endpoint) SetMode(m Mode) { e.mode.Store(int32(m)) }

func (e *Endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	b := string(body)
	e.mu.Lock()
	e.requests[b]++
	e.total++
	e.last = time.Now()
	if r.Header.Get("X-Warren-Redelivered") == "true" {
		e.redelivered++
	}
	if n, err := strconv.Atoi(r.Header.Get("X-Warren-Attempt")); err == nil {
		e.attempt = max(e.attempt, n)
	}
	e.inflight[r.URL.Path]++
	hold := e.hold
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.inflight[r.URL.Path]--
		e.mu.Unlock()
	}()

	switch Mode(e.mode.Load()) {
	case Fail:
		http.Error(w, "endpoint failing on purpose", http.StatusServiceUnavailable)
		return
	case Hang:
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		return
	}
	work := e.work
	if hold > 0 {
		select {
		case e.line <- struct{}{}:
			defer func() { <-e.line }()
			work = max(work, hold)
		case <-r.Context().Done():
			return
		}
	}
	select {
	case <-time.After(work):
	case <-r.Context().Done():
		return
	}
	switch {
	case strings.HasPrefix(b, "poison-"):
		http.Error(w, "no retry can fix this one", http.StatusUnprocessableEntity)
		return
	case strings.HasPrefix(b, "flaky-") && r.Header.Get("X-Warren-Attempt") == "1":
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	e.mu.Lock()
	e.acked[b]++
	e.oks++
	e.mu.Unlock()
}

// Idle reports whether the endpoint got no request for d and answers
// none.
func (e *Endpoint) Idle(d time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	busy := 0
	for _, n := range e.inflight {
		busy += n
	}
	return time.Since(e.last) > d && busy == 0
}

// Busy returns how many requests of the process named name the endpoint
// is answering.
func (e *Endpoint) Busy(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inflight["/"+name]
}

// Stats returns what the endpoint counted so far.
func (e *Endpoint) Stats() EndpointStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return EndpointStats{Requests: e.total, OKs: e.oks, Redelivered: e.redelivered, Duplicates: e.oks - len(e.acked)}
}

// Tries returns the most requests one body got, and the highest attempt
// (X-Warren-Attempt) any request carried.
func (e *Endpoint) Tries() (requests, attempt int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, n := range e.requests {
		requests = max(requests, n)
	}
	return requests, e.attempt
}

// Missing returns the bodies of want never answered 2xx or, for poison
// ones, never received.
func (e *Endpoint) Missing(want []string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, b := range want {
		if strings.HasPrefix(b, "poison-") && e.requests[b] == 0 || !strings.HasPrefix(b, "poison-") && e.acked[b] == 0 {
			out = append(out, b)
		}
	}
	return out
}
