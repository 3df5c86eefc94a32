// Command warren consumes a RabbitMQ queue and hands each message to a
// handler, with at-least-once guarantees. Run "warren help" for its
// commands and variables.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/config"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/health"
	"github.com/warren-mq/warren/memlimit"
	"github.com/warren-mq/warren/tracing/otlp"
	"github.com/warren-mq/warren/worker"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK     = 0
	exitFatal  = 1
	exitConfig = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runWorker(stderr)
	case "publish":
		return runPublish(args, stdin, stdout, stderr)
	case "dead":
		return runDead(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return exitOK
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "warren: unknown command %q; run \"warren help\"\n", cmd)
	return exitConfig
}

func usage(w io.Writer) {
	fmt.Fprint(w, `warren consumes a RabbitMQ queue and hands each message to a handler.

Usage:
  warren [run]                  run the worker (the default)
  warren publish [flags] [body ...]
                                publish each body, or each line of stdin, to
                                WARREN_QUEUE (persistent, confirmed)
  warren dead list [-n N]       show how many messages WARREN_QUEUE.dead holds,
                                and the first N
  warren dead replay [-limit N] move dead messages back to WARREN_QUEUE, their
                                attempts reset
  warren version                print the version
  warren help                   print this help

Exit codes: 0 clean stop, 1 fatal error, 2 invalid configuration.
Endpoints on WARREN_HEALTH_ADDR: /livez, /readyz, /metrics.
Traces: set OTEL_EXPORTER_OTLP_ENDPOINT to export a span per attempt at each
message (and per message warren publish sends) over OTLP; the trace context
(traceparent) crosses the queue in the messages' headers.

Environment:
`)
	if err := config.Usage(w); err != nil {
		fmt.Fprintln(w, err)
	}
}

// load reads the configuration and builds the logger; on failure it says
// why on stderr and returns the exit code.
func load(stderr io.Writer) (*config.Config, *zap.Logger, int) {
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "warren:", err)
		return nil, nil, exitConfig
	}
	logger, err := newLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintln(stderr, "warren:", err)
		return nil, nil, exitConfig
	}
	for _, name := range config.Unknown(os.Environ()) {
		logger.Warn("unknown variable ignored", zap.String("variable", name))
	}
	return cfg, logger, exitOK
}

func runWorker(stderr io.Writer) int {
	cfg, logger, code := load(stderr)
	if code != exitOK {
		return code
	}
	defer logger.Sync() //nolint:errcheck // nothing to do if stderr is gone

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "warren_build_info",
			Help:        "Always 1; the version label says which warren runs.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
	)
	mem, stopFloor := memory(cfg, logger)
	defer stopFloor()
	name := connectionName(cfg)
	h := handler.New(cfg, logger)
	tp, err := startTracing(cfg, logger)
	if err != nil {
		logger.Error("start tracing", zap.Error(err))
		return exitFatal
	}
	defer stopTracing(tp, func(err error) { logger.Warn("spans not exported at exit", zap.Error(err)) })
	w, err := worker.New(worker.Config{
		Dialer:           dialer(cfg, name),
		Topology:         cfg.Topology(),
		Handler:          h,
		Logger:           logger.Named("worker"),
		Registerer:       reg,
		TracerProvider:   tp.TracerProvider(),
		Prefetch:         cfg.Prefetch,
		MaxPrefetch:      cfg.MaxPrefetch,
		MaxInflightBytes: mem.Budget,
		Concurrency:      cfg.Concurrency,
		HandlerTimeout:   cfg.HandlerTimeout,
		ShutdownTimeout:  cfg.ShutdownTimeout,
		MaxAttempts:      cfg.MaxAttempts,
		MaxRetryAfter:    cfg.MaxRetryAfter,
		ReplyOnDead:      cfg.Reply.OnDead,
		Circuit: worker.CircuitConfig{
			Failures:         cfg.CircuitThreshold(),
			Window:           cfg.CircuitWindow,
			MaxProbeInterval: cfg.CircuitMaxProbeInterval,
		},
		RateLimit:   cfg.RateLimit,
		ConsumerTag: "warren-" + name,
	})
	if err != nil {
		logger.Error("create worker", zap.Error(err))
		return exitFatal
	}
	hs := health.New(health.Config{
		Addr:     cfg.HealthAddr,
		Live:     w.Alive,
		Ready:    w.Ready,
		Gatherer: reg,
		Logger:   logger,
	})
	if err := hs.Listen(); err != nil {
		logger.Error("start health server", zap.Error(err))
		return exitFatal
	}
	logger.Info("starting", zap.String("version", version), zap.String("queue", cfg.Queue),
		zap.String("handler", cfg.Handler), zap.Stringer("health_addr", hs.Addr()))

	wctx, stopWorker := context.WithCancel(context.Background())
	defer stopWorker()
	sigs := make(chan os.Signal, 1)
	stopSignals := []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT}
	if !signal.Ignored(syscall.SIGHUP) { // started with nohup: it stays ignored
		stopSignals = append(stopSignals, syscall.SIGHUP)
	}
	signal.Notify(sigs, stopSignals...)
	defer signal.Stop(sigs)
	sigDone := make(chan struct{})
	var sigLoop sync.WaitGroup
	sigLoop.Add(1)
	go func() {
		defer sigLoop.Done()
		onSignals(sigs, sigDone, logger, stopWorker, h)
	}()
	defer sigLoop.Wait()
	defer close(sigDone)

	// The health server outlives the worker's drain, so that probes and
	// metrics answer until the end; either failing stops both.
	hctx, stopHealth := context.WithCancel(context.Background())
	defer stopHealth()
	herr := make(chan error, 1)
	go func() {
		err := hs.Serve(hctx)
		stopWorker()
		herr <- err
	}()
	werr := w.Run(wctx)
	stopHealth()
	code = exitOK
	if err := <-herr; err != nil {
		logger.Error("health server", zap.Error(err))
		code = exitFatal
	}
	if werr != nil {
		logger.Error("worker", zap.Error(werr))
		code = exitFatal
	}
	return code
}

// memory decides what warren may hold from WARREN_MAX_INFLIGHT_BYTES and
// the pod's memory limit, and tells the Go runtime: without a GOMEMLIMIT,
// its soft memory limit is set, so that the collector's headroom does not
// double the peak of large messages; without a GOGC, the heap may grow to
// a floor before the collector runs (memlimit.FloorHeap). The function
// returned stops the latter.
func memory(cfg *config.Config, logger *zap.Logger) (memlimit.Plan, func()) {
	cgroup := memlimit.Cgroup(os.DirFS("/"))
	_, gomemlimit := os.LookupEnv("GOMEMLIMIT")
	plan := memlimit.Decide(int64(cfg.MaxInflightBytes), worker.DefaultMaxInflightBytes, cgroup, gomemlimit)
	if plan.SoftLimit > 0 {
		debug.SetMemoryLimit(plan.SoftLimit)
	}
	soft := debug.SetMemoryLimit(-1)
	stop, floor := func() {}, int64(0)
	if _, gogc := os.LookupEnv("GOGC"); !gogc {
		// Half the soft limit at most: in a small pod the floor must not
		// be what brings the heap to the limit.
		floor = min(memlimit.DefaultHeapFloor, soft/2)
		stop = memlimit.FloorHeap(floor)
	}
	logger.Info("memory", zap.Int64("max_inflight_bytes", plan.Budget), zap.String("max_inflight_bytes_from", plan.BudgetFrom),
		zap.Int64("cgroup_limit", cgroup), zap.Int64("go_memory_limit", soft), zap.String("go_memory_limit_from", plan.SoftFrom),
		zap.Int64("gc_heap_floor", floor))
	return plan, stop
}

// startTracing builds the span exporter that the OTEL_* variables
// describe, or returns nil when they set no endpoint: tracing is off. The
// SDK reports export failures through OpenTelemetry's one error handler,
// which is global: it is pointed at the log here, where main wires.
func startTracing(cfg *config.Config, logger *zap.Logger) (*otlp.Provider, error) {
	tp, err := otlp.New(context.Background(), cfg.Tracing, version)
	if err != nil || tp == nil {
		return nil, err
	}
	log := logger.Named("tracing")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("export spans", zap.Error(err)) }))
	s := tp.Settings()
	log.Info("tracing", zap.String("endpoint", s.Endpoint), zap.String("protocol", s.Protocol),
		zap.String("service_name", s.ServiceName), zap.String("sampler", s.Sampler), zap.Float64("sampler_arg", s.Ratio))
	return tp, nil
}

// stopTracing exports the spans still buffered, within
// otlp.ShutdownTimeout: an unreachable collector delays the exit by
// that much at most. A failure goes to report.
func stopTracing(tp *otlp.Provider, report func(error)) {
	ctx, cancel := context.WithTimeout(context.Background(), otlp.ShutdownTimeout)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		report(err)
	}
}

// killer is a handler that can kill the processes it started at once:
// the exec handler.
type killer interface{ KillAll() }

// onSignals handles the signals that stop warren until done is closed.
// The first SIGTERM, SIGINT or SIGHUP starts the drain (stop). A second
// one, or SIGQUIT, stops at once: the handler's processes are killed
// first, since the broker hands their messages to another consumer as
// soon as warren's connection is gone, then the signal is raised again
// with its default action: the process ends by it (SIGQUIT: Go's
// goroutine dump and exit code 2).
func onSignals(sigs <-chan os.Signal, done <-chan struct{}, logger *zap.Logger, stop func(), h worker.Handler) {
	draining := false
	for {
		var sig os.Signal
		select {
		case <-done:
			return
		case sig = <-sigs:
		}
		if !draining && sig != syscall.SIGQUIT {
			draining = true
			logger.Info("shutting down; a second signal stops at once", zap.Stringer("signal", sig))
			stop()
			continue
		}
		logger.Warn("stopping at once; the broker returns unacked messages to the queue", zap.Stringer("signal", sig))
		if k, ok := h.(killer); ok {
			k.KillAll()
		}
		_ = logger.Sync()
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		return
	}
}

func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Encoding = format
	zc.Sampling = nil // a test or an operator counting lines must see them all
	zc.DisableStacktrace = true
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	if format == "console" {
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	l, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("build logger: %w", err)
	}
	return l, nil
}

func connectionName(cfg *config.Config) string {
	if cfg.ConnectionName != "" {
		return cfg.ConnectionName
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "warren"
}

// dialer returns the dialer of cfg's broker. The URL file and TLS files,
// if set, are read again on every dial: a rotated Secret takes effect at
// the next reconnect, without a restart.
func dialer(cfg *config.Config, name string) *broker.Dialer {
	return &broker.Dialer{URLs: cfg.URLs, URLFile: cfg.AMQP.URLFile, TLS: cfg.TLSConfig, TLSFiles: cfg.TLSFiles(),
		Heartbeat: cfg.Heartbeat, Name: name}
}
