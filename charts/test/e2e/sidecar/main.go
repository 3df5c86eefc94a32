// Command sidecar stands for the application container of the chart's
// http-sidecar scenario in the end-to-end tests: warren POSTs each message
// to it on localhost, and it hands the message on to the test's collector
// (COLLECTOR_URL, set as the image's ENV), answering with the collector's
// status. GET /healthz is its readiness probe. On SIGTERM it stops taking
// connections, finishes the requests under way and exits 0, as an
// application that drains should.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() { os.Exit(run()) }

func run() int {
	collector := os.Getenv("COLLECTOR_URL")
	addr := os.Getenv("LISTEN_ADDR")
	if collector == "" || addr == "" {
		fmt.Fprintln(os.Stderr, "sidecar: COLLECTOR_URL and LISTEN_ADDR are required")
		return 2
	}
	host, _ := os.Hostname()
	// Longer than the slowest message the tests hand it (the KEDA
	// scale-in scenario's).
	client := &http.Client{Timeout: 30 * time.Second}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("POST /messages", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, collector, bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header.Set("X-Pod", host)
		req.Header.Set("X-Redelivered", r.Header.Get("X-Warren-Redelivered"))
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	// Longer than any call the tests make it wait for, and than the
	// handler timeout of the chart's http-sidecar values (30 s): warren
	// waits that long for a call under way, so must the application.
	shutdown, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: shutdown: %v\n", err)
		return 1
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		return 1
	}
	return 0
}
