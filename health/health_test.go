package health

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testClient does not keep connections alive, so no transport goroutine
// outlives a test and trips goleak.
var testClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// startServer listens on a free loopback port and serves until the test ends;
// cleanup cancels Serve and waits for it, so the goroutine has an owner.
func startServer(t *testing.T, cfg Config, tune func(*Server)) (*Server, string) {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s := New(cfg)
	if tune != nil {
		tune(s)
	}
	if err := s.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return s, "http://" + s.Addr().String()
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, method, url string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func TestProbes(t *testing.T) {
	tests := []struct {
		name      string
		giveLive  error
		giveReady error
		givePath  string
		wantCode  int
		wantBody  string
	}{
		{name: "live ok", givePath: "/livez", wantCode: 200, wantBody: "ok\n"},
		{name: "ready ok", givePath: "/readyz", wantCode: 200, wantBody: "ok\n"},
		{
			name: "not alive", givePath: "/livez",
			giveLive: errors.New("no progress for 2m0s"),
			wantCode: 503, wantBody: "not alive: no progress for 2m0s\n",
		},
		{
			name: "not ready", givePath: "/readyz",
			giveReady: errors.New("not connected to broker"),
			wantCode:  503, wantBody: "not ready: not connected to broker\n",
		},
		{
			name: "live ignores readiness", givePath: "/livez",
			giveReady: errors.New("not connected to broker"),
			wantCode:  200, wantBody: "ok\n",
		},
		{
			name: "ready ignores liveness", givePath: "/readyz",
			giveLive: errors.New("stuck"),
			wantCode: 200, wantBody: "ok\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := startServer(t, Config{
				Live:  func() error { return tt.giveLive },
				Ready: func() error { return tt.giveReady },
			}, nil)

			got := do(t, http.MethodGet, base+tt.givePath)
			if got.status != tt.wantCode || got.body != tt.wantBody {
				t.Errorf("GET %s = %d %q, want %d %q", tt.givePath, got.status, got.body, tt.wantCode, tt.wantBody)
			}
			if ct := got.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q, want text/plain; charset=utf-8", ct)
			}
			if cc := got.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}

			// HEAD reports the same status without a body.
			head := do(t, http.MethodHead, base+tt.givePath)
			if head.status != tt.wantCode || head.body != "" {
				t.Errorf("HEAD %s = %d %q, want %d with empty body", tt.givePath, head.status, head.body, tt.wantCode)
			}
		})
	}
}

func TestReadinessFlipsAtRuntime(t *testing.T) {
	var reason atomic.Pointer[string]
	_, base := startServer(t, Config{
		Ready: func() error {
			if r := reason.Load(); r != nil {
				return errors.New(*r)
			}
			return nil
		},
	}, nil)

	notConnected := "not connected to broker"
	draining := "draining"
	steps := []struct {
		give     *string
		wantCode int
		wantBody string
	}{
		{give: &notConnected, wantCode: 503, wantBody: "not ready: not connected to broker\n"},
		{give: nil, wantCode: 200, wantBody: "ok\n"},
		{give: &draining, wantCode: 503, wantBody: "not ready: draining\n"},
		{give: nil, wantCode: 200, wantBody: "ok\n"},
	}
	for i, st := range steps {
		reason.Store(st.give)
		got := do(t, http.MethodGet, base+"/readyz")
		if got.status != st.wantCode || got.body != st.wantBody {
			t.Errorf("step %d: GET /readyz = %d %q, want %d %q", i, got.status, got.body, st.wantCode, st.wantBody)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "warren_test_messages_total",
		Help: "Messages counted by the health test.",
	})
	reg.MustRegister(c)
	c.Add(3)

	_, base := startServer(t, Config{Gatherer: reg}, nil)
	got := do(t, http.MethodGet, base+"/metrics")
	if got.status != http.StatusOK {
		t.Fatalf("GET /metrics status = %d, want 200; body %q", got.status, got.body)
	}
	if ct := got.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type = %q, want the Prometheus text format", ct)
	}
	for _, want := range []string{
		"# HELP warren_test_messages_total Messages counted by the health test.\n",
		"# TYPE warren_test_messages_total counter\n",
		"warren_test_messages_total 3\n",
	} {
		if !strings.Contains(got.body, want) {
			t.Errorf("/metrics body lacks %q; got:\n%s", want, got.body)
		}
	}
}

func TestMetricsGatherErrorIsLoggedAndPartialServed(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "warren_test_ok_total", Help: "Still served."})
	reg.MustRegister(c)
	failing := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return nil, errors.New("collector broke") })

	core, logs := observer.New(zapcore.ErrorLevel)
	logger := zaptest.NewLogger(t, zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, core)
	})))
	_, base := startServer(t, Config{Gatherer: prometheus.Gatherers{reg, failing}, Logger: logger}, nil)

	got := do(t, http.MethodGet, base+"/metrics")
	if got.status != http.StatusOK {
		t.Fatalf("GET /metrics status = %d, want 200 (ContinueOnError)", got.status)
	}
	if !strings.Contains(got.body, "warren_test_ok_total 0\n") {
		t.Errorf("/metrics body lacks the healthy counter; got:\n%s", got.body)
	}
	if n := logs.FilterMessageSnippet("collector broke").Len(); n != 1 {
		t.Errorf("logged %d entries mentioning the gather error, want 1; all: %v", n, logs.All())
	}
}

func TestIndex(t *testing.T) {
	_, base := startServer(t, Config{}, nil)
	got := do(t, http.MethodGet, base+"/")
	if got.status != http.StatusOK {
		t.Fatalf("GET / status = %d, want 200", got.status)
	}
	for _, want := range []string{"/livez", "/readyz", "/metrics"} {
		if !strings.Contains(got.body, want) {
			t.Errorf("index lacks %q; got %q", want, got.body)
		}
	}
}

func TestMethodAndPathErrors(t *testing.T) {
	tests := []struct {
		name       string
		giveMethod string
		givePath   string
		wantCode   int
		wantAllow  string
	}{
		{name: "post livez", giveMethod: http.MethodPost, givePath: "/livez", wantCode: 405, wantAllow: "GET, HEAD"},
		{name: "post readyz", giveMethod: http.MethodPost, givePath: "/readyz", wantCode: 405, wantAllow: "GET, HEAD"},
		{name: "post metrics", giveMethod: http.MethodPost, givePath: "/metrics", wantCode: 405, wantAllow: "GET, HEAD"},
		{name: "delete livez", giveMethod: http.MethodDelete, givePath: "/livez", wantCode: 405, wantAllow: "GET, HEAD"},
		{name: "put index", giveMethod: http.MethodPut, givePath: "/", wantCode: 405, wantAllow: "GET, HEAD"},
		{name: "unknown path", giveMethod: http.MethodGet, givePath: "/healthz", wantCode: 404},
		{name: "probe subpath", giveMethod: http.MethodGet, givePath: "/livez/extra", wantCode: 404},
		{name: "post unknown path", giveMethod: http.MethodPost, givePath: "/nope", wantCode: 404},
	}
	_, base := startServer(t, Config{}, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, tt.giveMethod, base+tt.givePath)
			if got.status != tt.wantCode {
				t.Errorf("%s %s status = %d, want %d", tt.giveMethod, tt.givePath, got.status, tt.wantCode)
			}
			if allow := got.header.Get("Allow"); allow != tt.wantAllow {
				t.Errorf("%s %s Allow = %q, want %q", tt.giveMethod, tt.givePath, allow, tt.wantAllow)
			}
		})
	}
}

func TestListenAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("occupy a port: %v", err)
	}
	defer taken.Close()
	addr := taken.Addr().String()

	tests := []struct {
		name string
		give func(*Server) error
	}{
		{name: "Listen", give: (*Server).Listen},
		{name: "Serve without Listen", give: func(s *Server) error { return s.Serve(context.Background()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{Addr: addr, Logger: zaptest.NewLogger(t)})
			err := tt.give(s)
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("err = %v, want EADDRINUSE", err)
			}
			if want := `listen on "` + addr + `": `; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("err = %q, want prefix %q", err, want)
			}
		})
	}
}

func TestServeReturnsNilAndClosesPort(t *testing.T) {
	s := New(Config{Addr: "127.0.0.1:0", Logger: zaptest.NewLogger(t)})
	if err := s.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	addr := s.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()

	if got := do(t, http.MethodGet, "http://"+addr+"/livez"); got.status != http.StatusOK {
		t.Fatalf("GET /livez while serving = %d, want 200", got.status)
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after ctx cancel")
	}

	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %s after Serve returned succeeded; want the port closed", addr)
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Error("second Serve = nil, want an error")
	}
}

func TestSlowHeadersClosed(t *testing.T) {
	const readHeader = 300 * time.Millisecond
	s, _ := startServer(t, Config{}, func(s *Server) { s.timeouts.readHeader = readHeader })

	// The server's clock starts once it accepts, which may come before
	// Dial returns here: start counting before it.
	start := time.Now()
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()

	// Trickle a never-ending header one byte per interval. Each short read
	// paces the trickle and detects the close: a timeout means the server
	// still holds the connection open; EOF or reset means it hung up.
	// net/http may send "400 Bad Request" before hanging up; it must never
	// serve the request.
	const interval = 20 * time.Millisecond
	head := "GET /livez HTTP/1.1\r\nHost: warren\r\nX-Slow: "
	deadline := start.Add(5 * time.Second)
	var reply []byte
	buf := make([]byte, 512)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("connection still open after %v; want it closed after ReadHeaderTimeout %v", time.Since(start), readHeader)
		}
		if len(reply) == 0 { // once the server answered, only wait for the close
			b := byte('a')
			if i < len(head) {
				b = head[i]
			}
			if _, err := conn.Write([]byte{b}); err != nil {
				break // the server closed the connection and reset it
			}
		}
		if err := conn.SetReadDeadline(time.Now().Add(interval)); err != nil {
			t.Fatalf("set read deadline: %v", err)
		}
		n, err := conn.Read(buf)
		reply = append(reply, buf[:n]...)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			break
		}
	}
	if elapsed := time.Since(start); elapsed < readHeader {
		t.Errorf("closed after %v, before ReadHeaderTimeout %v", elapsed, readHeader)
	}
	if len(reply) > 0 && !strings.HasPrefix(string(reply), "HTTP/1.1 4") {
		t.Errorf("server replied %q to an incomplete request; want no reply or a 4xx", reply)
	}
}

func TestNewDefaults(t *testing.T) {
	s := New(Config{Addr: ":0"})
	srv := s.httpServer()
	tests := []struct {
		name string
		give time.Duration
		want time.Duration
	}{
		{name: "ReadHeaderTimeout", give: srv.ReadHeaderTimeout, want: 5 * time.Second},
		{name: "ReadTimeout", give: srv.ReadTimeout, want: 10 * time.Second},
		{name: "WriteTimeout", give: srv.WriteTimeout, want: 30 * time.Second},
		{name: "IdleTimeout", give: srv.IdleTimeout, want: 60 * time.Second},
		{name: "shutdown grace", give: s.timeouts.shutdown, want: 5 * time.Second},
	}
	for _, tt := range tests {
		if tt.give != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.give, tt.want)
		}
	}
	if srv.MaxHeaderBytes != 16<<10 {
		t.Errorf("MaxHeaderBytes = %d, want %d", srv.MaxHeaderBytes, 16<<10)
	}
	if srv.ErrorLog == nil {
		t.Error("ErrorLog is nil, want it routed to zap")
	}
	if s.Addr() != nil {
		t.Errorf("Addr before Listen = %v, want nil", s.Addr())
	}
}

// TestGarbageRequests sends what no probe or scraper sends: the server
// answers each with an error or hangs up, within its timeouts, and serves
// the probes throughout and after.
func TestGarbageRequests(t *testing.T) {
	s, base := startServer(t, Config{}, func(s *Server) {
		s.timeouts.readHeader = 500 * time.Millisecond
		s.timeouts.read = time.Second
	})
	binary := make([]byte, 4096)
	for i := range binary {
		binary[i] = byte(i*7 + i/256)
	}
	tlsHello := []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}
	for _, tt := range []struct {
		name string
		give string
		want string // start of the reply; "" for a hang-up without one
	}{
		{"binary", string(binary), "HTTP/1.1 400"},
		{"tls hello", string(tlsHello), "HTTP/1.1 400"},
		{"http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 400"},
		{"unknown version", "GET /livez HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505"},
		{"nul in method", "G\x00T /livez HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"},
		{"nul in header", "GET /livez HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "HTTP/1.1 400"},
		{"header too large", "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", "HTTP/1.1 431"},
		{"long path", "GET /" + strings.Repeat("a", 64<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 431"},
		{"no host", "GET /livez HTTP/1.1\r\n\r\n", "HTTP/1.1 400"},
		// Valid requests the server does not serve close only when asked
		// to; otherwise they stay open until the idle timeout.
		{"smuggling", "POST /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 405"},
		{"bad chunk", "POST /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 405"},
		{"body never sent", "POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc", "HTTP/1.1 405"},
		{"only a newline", "\r\n", ""},
		{"connect", "CONNECT warren:443 HTTP/1.1\r\nHost: warren:443\r\nConnection: close\r\n\r\n", "HTTP/1.1 404"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reply := rawExchange(t, s.Addr().String(), tt.give)
			if !strings.HasPrefix(reply, tt.want) {
				t.Errorf("reply to %.40q = %.60q, want it to start with %q", tt.give, reply, tt.want)
			}
			if strings.Contains(reply, "200 OK") {
				t.Errorf("reply to %.40q served a probe: %.200q", tt.give, reply)
			}
			if got := do(t, http.MethodGet, base+"/livez"); got.status != http.StatusOK {
				t.Errorf("GET /livez after %s = %d, want 200", tt.name, got.status)
			}
		})
	}
}

// rawExchange writes req on a new connection and returns what the server
// replies until it hangs up; it fails the test if the server keeps the
// connection open past its timeouts.
func rawExchange(t *testing.T, addr, req string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	// A server that answers early may reset the rest of a large write.
	_, _ = conn.Write([]byte(req))
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server still holds the connection after 5s; replied %.60q", b)
	}
	return string(b)
}

// TestSlowClientsDoNotStarveProbes holds many connections open the way
// slow or stalled clients do; the probes are served meanwhile, and the
// server drops the stalled ones at its header timeout.
func TestSlowClientsDoNotStarveProbes(t *testing.T) {
	const readHeader = 500 * time.Millisecond
	s, base := startServer(t, Config{}, func(s *Server) { s.timeouts.readHeader = readHeader })
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range 200 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	start := time.Now()
	if got := do(t, http.MethodGet, base+"/readyz"); got.status != http.StatusOK {
		t.Errorf("GET /readyz with 200 stalled clients = %d, want 200", got.status)
	}
	if d := time.Since(start); d > readHeader {
		t.Errorf("GET /readyz with 200 stalled clients took %s, want it served at once", d)
	}
	for i, c := range conns {
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("stalled client %d still connected after 5s", i)
		}
		if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 4") {
			t.Fatalf("stalled client %d got %.60q, want nothing or a 4xx", i, b)
		}
	}
}
