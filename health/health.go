// Package health serves warren's liveness and readiness probes and its Prometheus metrics.
package health

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Config holds what a Server needs.
type Config struct {
	Addr     string              // listen address, e.g. ":8080" or "127.0.0.1:0"
	Live     func() error        // nil while the process makes progress; error text says why not
	Ready    func() error        // nil while ready to take work; error text is the reason
	Gatherer prometheus.Gatherer // what /metrics exposes
	Logger   *zap.Logger         // passed in; never use zap.L() or globals
}

// timeouts bound how long a client or a shutdown may hold the server. It is
// a separate unexported struct so tests can shorten it without widening the API.
type timeouts struct {
	readHeader time.Duration
	read       time.Duration
	write      time.Duration
	idle       time.Duration
	shutdown   time.Duration
}

// defaultTimeouts keep a slow or stuck client (or kubelet) from pinning
// connections, while leaving /metrics time to render a large registry.
var defaultTimeouts = timeouts{
	readHeader: 5 * time.Second,
	read:       10 * time.Second,
	write:      30 * time.Second,
	idle:       60 * time.Second,
	shutdown:   ShutdownTimeout,
}

// ShutdownTimeout bounds how long Serve waits, once its context ends, for
// requests under way: a part of how long warren takes to exit.
const ShutdownTimeout = 5 * time.Second

// maxHeaderBytes is far more than any probe or scraper sends; the default 1 MiB
// would only help a misbehaving client.
const maxHeaderBytes = 16 << 10

// allowedMethods is what every endpoint answers; the rest get 405.
const allowedMethods = "GET, HEAD"

// Server serves /livez, /readyz and /metrics over HTTP. A Server serves once:
// after Serve returns its listener is closed.
type Server struct {
	cfg      Config
	log      *zap.Logger
	handler  http.Handler
	timeouts timeouts

	mu     sync.Mutex
	ln     net.Listener
	served bool
}

// New returns a Server for cfg. A nil Live or Ready always reports healthy, a
// nil Gatherer exposes an empty registry and a nil Logger discards logs, so a
// partial Config still yields a working server rather than a panic in a probe.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Live == nil {
		cfg.Live = func() error { return nil }
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.Named("health"),
		timeouts: defaultTimeouts,
	}
	s.handler = s.routes()
	return s
}

// routes builds the mux. Method checks live in the handlers rather than in
// mux patterns so the 405 response and Allow header are ours, not implied.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/{$}", onlyGetHead(http.HandlerFunc(index)))
	mux.Handle("/livez", onlyGetHead(probe("not alive", s.cfg.Live)))
	mux.Handle("/readyz", onlyGetHead(probe("not ready", s.cfg.Ready)))
	mux.Handle("/metrics", onlyGetHead(promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{
		ErrorLog: promLogger{s.log.Named("metrics")},
		// A broken collector should not blank the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	})))
	return mux
}

// Listen binds the address, so a port already in use fails at start-up, before the worker connects.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listenLocked()
}

// listenLocked binds the listener; s.mu must be held.
func (s *Server) listenLocked() error {
	if s.ln != nil || s.served {
		return fmt.Errorf("listen on %q: already listening", s.cfg.Addr)
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	return nil
}

// Addr returns the bound address after Listen (tests listen on 127.0.0.1:0).
// It returns nil before Listen.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve serves until ctx is done, then shuts down gracefully (bounded, a few seconds) and returns nil; it returns an error only if serving failed. Calls Listen itself if Listen was not called.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.served {
		s.mu.Unlock()
		return errors.New("serve: server already served")
	}
	if s.ln == nil {
		if err := s.listenLocked(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.served = true
	ln := s.ln
	s.mu.Unlock()

	srv := s.httpServer()

	s.log.Info("health server listening", zap.Stringer("addr", ln.Addr()))

	// Serve owns this goroutine: every return path below waits on errc.
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		// srv.Serve only returns early on an accept failure; ctx is not done,
		// so nobody called Shutdown and ErrServerClosed cannot occur here.
		// Close cuts connections still open, so none outlive Serve.
		_ = srv.Close()
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	// ctx is already done, so the shutdown deadline needs a fresh context.
	sctx, cancel := context.WithTimeout(context.Background(), s.timeouts.shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Connections still busy after the grace period are cut, so a stuck
		// scraper cannot hold up the process exit.
		s.log.Warn("health server shutdown timed out; closing connections", zap.Error(err))
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	}
	s.log.Info("health server stopped")
	return nil
}

// httpServer applies s.timeouts; it is separate from Serve so tests can check
// the configuration without serving.
func (s *Server) httpServer() *http.Server {
	return &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.timeouts.readHeader,
		ReadTimeout:       s.timeouts.read,
		WriteTimeout:      s.timeouts.write,
		IdleTimeout:       s.timeouts.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          stdLog(s.log.Named("http")),
	}
}

// onlyGetHead answers 405 for anything but GET and HEAD; net/http already
// drops the body for HEAD.
func onlyGetHead(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", allowedMethods)
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// probe reports check as 200 "ok" or 503 with the reason. It calls only
// check, so a probe never waits on the broker.
func probe(failPrefix string, check func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		// A cached "ok" would hide a pod that has since gone unhealthy.
		h.Set("Cache-Control", "no-store")
		if err := check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s: %s\n", failPrefix, err)
			return
		}
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, "ok\n")
	})
}

// indexText tells a human with curl where to look.
const indexText = `warren health server
/livez    liveness probe
/readyz   readiness probe
/metrics  Prometheus metrics
`

func index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	fmt.Fprint(w, indexText)
}

// promLogger routes promhttp's errors to zap; promhttp only knows Println.
type promLogger struct{ log *zap.Logger }

// Println logs v as one error entry, formatted like log.Println without the newline.
func (l promLogger) Println(v ...any) {
	l.log.Error(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// stdLog adapts zap for http.Server.ErrorLog. Warn, because what net/http
// reports there (accept failures, handler panics) deserves attention.
func stdLog(l *zap.Logger) *log.Logger {
	std, err := zap.NewStdLogAt(l, zap.WarnLevel)
	if err != nil {
		// Only an invalid level fails, and WarnLevel is valid; fall back anyway.
		return zap.NewStdLog(l)
	}
	return std
}
