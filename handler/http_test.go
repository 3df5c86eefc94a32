package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/worker"
)

// serve starts a real HTTP server on loopback until the test ends.
func serve(t *testing.T, fn http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(fn)
	t.Cleanup(srv.Close)
	return srv
}

// newHTTP returns the handler under test, its idle connections closed when
// the test ends.
func newHTTP(t *testing.T, url string) *HTTP {
	t.Helper()
	h := NewHTTP(url, 4)
	t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// request is what the server received.
type request struct {
	method, path string
	header       http.Header
	body         []byte
}

// recordingServer answers every request with status and keeps what it
// received.
func recordingServer(t *testing.T, status int) (*httptest.Server, <-chan request) {
	t.Helper()
	reqs := make(chan request, 100)
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		reqs <- request{method: r.Method, path: r.URL.RequestURI(), header: r.Header.Clone(), body: body}
		w.WriteHeader(status)
	})
	return srv, reqs
}

// TestHTTPStatus follows CloudEvents and Knative delivery: what the
// endpoint may answer while it deploys, scales or renews a token (404,
// 409, 401, 403, 408, 429, 5xx) retries; only the statuses that say the
// message itself is bad are dead.
func TestHTTPStatus(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		give int
		want worker.Outcome
	}{
		{200, worker.Ack},
		{201, worker.Ack},
		{202, worker.Ack},
		{204, worker.Ack},
		{401, worker.Retry},
		{403, worker.Retry},
		{404, worker.Retry},
		{405, worker.Retry},
		{408, worker.Retry},
		{409, worker.Retry},
		{429, worker.Retry},
		{500, worker.Retry},
		{501, worker.Retry},
		{502, worker.Retry},
		{503, worker.Retry},
		{504, worker.Retry},
		{400, worker.Dead},
		{410, worker.Dead},
		{413, worker.Dead},
		{415, worker.Dead},
		{422, worker.Dead},
	} {
		t.Run(strconv.Itoa(tt.give), func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.give)
				if tt.give != http.StatusNoContent {
					fmt.Fprintf(w, "  reason for %d\n", tt.give)
				}
			})
			err := newHTTP(t, srv.URL).Handle(context.Background(), &worker.Message{Body: []byte("x")})
			if got := worker.OutcomeOf(err); got != tt.want {
				t.Fatalf("Handle() answered %d = %v (%v), want %v", tt.give, err, got, tt.want)
			}
			if err == nil {
				return
			}
			if want := fmt.Sprintf("post: status %d: reason for %d", tt.give, tt.give); err.Error() != want {
				t.Errorf("Handle() answered %d = %q, want %q", tt.give, err, want)
			}
			if after, ok := worker.RetryDelay(err); ok {
				t.Errorf("Handle() answered %d without Retry-After = %v, asks to wait %v, want no wait", tt.give, err, after)
			}
		})
	}
}

func TestHTTPRetryAfter(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		status     int
		retryAfter string
		want       worker.Outcome
		wantAfter  time.Duration // -1: no wait asked (worker.RetryDelay)
	}{
		{429, "7", worker.Retry, 7 * time.Second},
		{503, "120", worker.Retry, 2 * time.Minute},
		{500, "0", worker.Retry, 0},
		{408, "7", worker.Retry, 7 * time.Second},
		{503, time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat), worker.Retry, 0},
		{429, "later", worker.Retry, -1},
		{429, "-3", worker.Retry, -1},
		{400, "7", worker.Dead, -1}, // a bad message stays bad, however long one waits
	} {
		t.Run(fmt.Sprintf("%d %s", tt.status, tt.retryAfter), func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", tt.retryAfter)
				w.WriteHeader(tt.status)
			})
			err := newHTTP(t, srv.URL).Handle(context.Background(), &worker.Message{})
			if got := worker.OutcomeOf(err); got != tt.want {
				t.Fatalf("Handle() answered %d, Retry-After %q = %v (%v), want %v", tt.status, tt.retryAfter, err, got, tt.want)
			}
			switch after, ok := worker.RetryDelay(err); {
			case tt.wantAfter < 0 && ok:
				t.Errorf("Handle() answered %d, Retry-After %q asks to wait %v, want no wait", tt.status, tt.retryAfter, after)
			case tt.wantAfter >= 0 && !ok:
				t.Errorf("Handle() answered %d, Retry-After %q = %v, want a wait of %v", tt.status, tt.retryAfter, err, tt.wantAfter)
			case ok && after != tt.wantAfter:
				t.Errorf("Handle() answered %d, Retry-After %q asks to wait %v, want %v", tt.status, tt.retryAfter, after, tt.wantAfter)
			}
		})
	}
}

// TestHTTPDeadStatuses: the statuses that mean dead are a setting; every
// other failure retries.
func TestHTTPDeadStatuses(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		dead []int
		give int
		want worker.Outcome
	}{
		{[]int{404}, 404, worker.Dead},
		{[]int{404}, 400, worker.Retry},
		{[]int{404}, 422, worker.Retry},
		{nil, 400, worker.Retry},
		{nil, 200, worker.Ack},
		{[]int{500, 599}, 599, worker.Dead},
		{[]int{500, 599}, 503, worker.Retry},
	} {
		t.Run(fmt.Sprintf("%v %d", tt.dead, tt.give), func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tt.give) })
			h := newHTTP(t, srv.URL)
			h.DeadStatuses = tt.dead
			err := h.Handle(context.Background(), &worker.Message{Body: []byte("x")})
			if got := worker.OutcomeOf(err); got != tt.want {
				t.Errorf("Handle() with dead statuses %v answered %d = %v (%v), want %v", tt.dead, tt.give, err, got, tt.want)
			}
		})
	}
}

func TestHTTPRedirectIsNotFollowed(t *testing.T) {
	verifyNoLeaks(t)
	var targetHits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/target", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/target", func(w http.ResponseWriter, r *http.Request) {
		targetHits.Add(1)
	})
	srv := serve(t, mux.ServeHTTP)
	err := newHTTP(t, srv.URL+"/hook").Handle(context.Background(), &worker.Message{Body: []byte("x")})
	if worker.OutcomeOf(err) != worker.Retry || !strings.Contains(err.Error(), "status 301") {
		t.Errorf("Handle() answered 301 = %v, want a retry naming status 301", err)
	}
	if n := targetHits.Load(); n != 0 {
		t.Errorf("redirect target hit %d times, want 0: the redirect must not be followed", n)
	}
}

func TestHTTPErrorBodyIsBounded(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		give string
		want string
	}{
		{"", "post: status 500: "},
		{"short\n", "post: status 500: short"},
		{strings.Repeat("a", 1024), "post: status 500: " + strings.Repeat("a", 1024)},
		{strings.Repeat("b", 1024) + "TAIL", "post: status 500: " + strings.Repeat("b", 1024)},
		{strings.Repeat("c", 1<<20), "post: status 500: " + strings.Repeat("c", 1024)},
	} {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, tt.give)
		})
		err := newHTTP(t, srv.URL).Handle(context.Background(), &worker.Message{})
		if err == nil || err.Error() != tt.want {
			t.Errorf("Handle() answered 500 with %d bytes = %.60q (%d bytes), want %.60q (%d bytes)", len(tt.give), err, len(fmt.Sprint(err)), tt.want, len(tt.want))
		}
	}
}

func TestHTTPConnectionRefusedRetries(t *testing.T) {
	verifyNoLeaks(t)
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	err := newHTTP(t, url).Handle(context.Background(), &worker.Message{})
	if err == nil || worker.OutcomeOf(err) != worker.Retry {
		t.Errorf("Handle() to a closed server = %v (%v), want a retry", err, worker.OutcomeOf(err))
	}
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Errorf("Handle() to a closed server = %v, want the network error kept", err)
	}
}

func TestHTTPTimeoutRetries(t *testing.T) {
	verifyNoLeaks(t)
	release := make(chan struct{})
	var arrived atomic.Int32
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select { // never answers
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })
	h := newHTTP(t, srv.URL)
	for _, body := range []string{"", strings.Repeat("x", 1<<20)} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		begin := time.Now()
		err := h.Handle(ctx, &worker.Message{Body: []byte(body)})
		took := time.Since(begin)
		cancel()
		if worker.OutcomeOf(err) != worker.Retry || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Handle(%d bytes) to a server that never answers = %v, want a retry naming the deadline", len(body), err)
		}
		if took > 5*time.Second {
			t.Errorf("Handle(%d bytes) with a 200ms timeout took %v", len(body), took)
		}
	}
	if n := arrived.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2", n)
	}
}

func TestHTTPRequest(t *testing.T) {
	verifyNoLeaks(t)
	ts := time.Date(2025, 3, 1, 12, 30, 0, 0, time.FixedZone("CET", 3600))
	body := make([]byte, 256)
	for i := range body {
		body[i] = byte(i)
	}
	for _, tt := range []struct {
		name string
		give *worker.Message
		want map[string]string // "" for a header that must be absent
	}{
		{
			name: "every property",
			give: &worker.Message{
				Body: body, ContentType: "application/json", ContentEncoding: "gzip",
				MessageID: "m-1", CorrelationID: "c-1", Exchange: "orders", RoutingKey: "orders.created",
				Type: "created", AppID: "shop", ReplyTo: "replies", Timestamp: ts, Redelivered: true,
				Headers: amqp.Table{"x-tenant": "acme", "attempt": int32(2), "flag": true},
			},
			want: map[string]string{
				"Content-Type":              "application/json",
				"X-Warren-Content-Encoding": "gzip",
				"X-Warren-Message-Id":       "m-1",
				"X-Warren-Correlation-Id":   "c-1",
				"X-Warren-Exchange":         "orders",
				"X-Warren-Routing-Key":      "orders.created",
				"X-Warren-Type":             "created",
				"X-Warren-App-Id":           "shop",
				"X-Warren-Reply-To":         "replies",
				"X-Warren-Timestamp":        "2025-03-01T11:30:00Z",
				"X-Warren-Redelivered":      "true",
				"X-Warren-Header-X-Tenant":  "acme",
				"X-Warren-Header-Attempt":   "2",
				"X-Warren-Header-Flag":      "true",
			},
		},
		{
			name: "empty properties",
			give: &worker.Message{Body: []byte("hi")},
			want: map[string]string{
				"Content-Type":            "application/octet-stream",
				"X-Warren-Redelivered":    "false",
				"X-Warren-Message-Id":     "",
				"X-Warren-Correlation-Id": "",
				"X-Warren-Timestamp":      "",
				"X-Warren-Exchange":       "",
			},
		},
		{
			name: "no header injection",
			give: &worker.Message{Headers: amqp.Table{
				"x-evil":         "a\r\nX-Injected: yes",
				"bad name":       "dropped",
				"x-colon:":       "dropped",
				"x-bytes":        []byte("b\nX-Injected-Too: yes"),
				"x-ctl":          "c\x01\x7fd\te",
				"x-\u00fcnicode": "dropped",
			}, MessageID: "m\r\nX-Injected-Id: yes"},
			want: map[string]string{
				"X-Warren-Header-X-Evil":  "aX-Injected: yes",
				"X-Warren-Header-X-Bytes": "bX-Injected-Too: yes",
				"X-Warren-Header-X-Ctl":   "cd\te",
				"X-Warren-Message-Id":     "mX-Injected-Id: yes",
				"X-Injected":              "",
				"X-Injected-Too":          "",
				"X-Injected-Id":           "",
			},
		},
		{
			// HTTP carries any byte from 0x80 up (obs-text); warren passes
			// them as they are rather than turning them into U+FFFD.
			name: "bytes not UTF-8",
			give: &worker.Message{Headers: amqp.Table{"x-latin1": "caf\xe9", "x-raw": []byte{'a', 0xff, 0, 'b'}}, CorrelationID: "\xc3\x28"},
			want: map[string]string{
				"X-Warren-Header-X-Latin1": "caf\xe9",
				"X-Warren-Header-X-Raw":    "a\xffb",
				"X-Warren-Correlation-Id":  "\xc3\x28",
			},
		},
		{
			name: "control characters in properties",
			give: &worker.Message{ContentType: "text/plain\n", CorrelationID: "c\x00-1", RoutingKey: "k\x1b[31m"},
			want: map[string]string{
				"Content-Type":            "text/plain",
				"X-Warren-Correlation-Id": "c-1",
				"X-Warren-Routing-Key":    "k[31m",
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recordingServer(t, http.StatusNoContent)
			if err := newHTTP(t, srv.URL+"/hook?v=1").Handle(context.Background(), tt.give); err != nil {
				t.Fatalf("Handle() = %v, want nil", err)
			}
			r := <-reqs
			if r.method != http.MethodPost || r.path != "/hook?v=1" {
				t.Errorf("server got %s %s, want POST /hook?v=1", r.method, r.path)
			}
			if string(r.body) != string(tt.give.Body) {
				t.Errorf("server got body %.40q (%d bytes), want %.40q (%d bytes)", r.body, len(r.body), tt.give.Body, len(tt.give.Body))
			}
			for k, want := range tt.want {
				if got := r.header.Values(k); want == "" && len(got) != 0 || want != "" && (len(got) != 1 || got[0] != want) {
					t.Errorf("server got %s: %q, want %q", k, got, want)
				}
			}
			for k, v := range r.header {
				if strings.Contains(strings.Join(v, ","), "dropped") {
					t.Errorf("server got %s: %q, want headers with invalid names left out", k, v)
				}
			}
		})
	}
}

func TestHTTPReusesConnections(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		status int
		body   string
	}{
		{http.StatusOK, strings.Repeat("ok", 1000)},
		{http.StatusNoContent, ""},
		{http.StatusServiceUnavailable, "busy"},
		{http.StatusBadRequest, "bad"},
	} {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			var mu sync.Mutex
			conns := 0
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					mu.Lock()
					conns++
					mu.Unlock()
				}
			}
			srv.Start()
			t.Cleanup(srv.Close)
			h := newHTTP(t, srv.URL)
			for i := range 20 {
				err := h.Handle(context.Background(), &worker.Message{Body: []byte(strings.Repeat("m", i*100))})
				if got, want := worker.OutcomeOf(err), worker.OutcomeOf(statusError(tt.status)); got != want {
					t.Fatalf("Handle() #%d answered %d = %v, want %v", i+1, tt.status, err, want)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if conns >= 3 {
				t.Errorf("20 requests answered %d opened %d connections, want fewer than 3", tt.status, conns)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		give   string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"7s", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"Sat, 01 Mar 2025 12:00:30 GMT", 30 * time.Second, true},
		{"Saturday, 01-Mar-25 12:00:30 GMT", 30 * time.Second, true}, // RFC 850, still allowed
		{"2025-03-01T12:00:30Z", 0, false},
		// Beyond what a Duration holds: the longest wait, not a negative one.
		{"99999999999", time.Duration(1<<63 - 1), true},
		{"99999999999999999999", 0, false},
	} {
		got, ok := parseRetryAfter(tt.give, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q) = %v, %v, want %v, %v", tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}

// statusError is what a status means, for comparing outcomes.
func statusError(status int) error {
	switch {
	case status < 300:
		return nil
	case slices.Contains(DefaultHTTPDeadStatuses, status):
		return worker.Permanent(errors.New("dead"))
	}
	return errors.New("retry")
}
