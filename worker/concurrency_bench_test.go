package worker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/worker"
)

// BenchmarkConcurrency measures what a handler of each kind costs at each
// concurrency, with no broker in the loop: a backlog of messages shared
// by that many goroutines, as warren's handler slots take them. It reports
// throughput (msg/s) and the 99th percentile of one message's handling
// (p99-ms): what the choice of the default WARREN_CONCURRENCY trades. The
// CPU-bound handler is an exec of gawk burning about 50 ms of CPU; the
// I/O-bound one posts to an endpoint that answers after 50 ms.
//
//	go test -run XXX -bench Concurrency -benchtime 1x ./worker/
func BenchmarkConcurrency(b *testing.B) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer slow.Close()
	for _, kind := range []struct {
		name     string
		messages int
		handler  func(concurrency int) worker.Handler
	}{
		{"cpu-exec-50ms", 96, func(int) worker.Handler {
			return &handler.Exec{Command: "awk 'BEGIN{for(i=0;i<1000000;i++)s+=i}'", Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: zap.NewNop()}
		}},
		{"io-http-50ms", 320, func(c int) worker.Handler { return handler.NewHTTP(slow.URL, c) }},
	} {
		for _, c := range []int{1, 2, 4, 8, 16} {
			b.Run(kind.name+"/concurrency-"+strconv.Itoa(c), func(b *testing.B) {
				h := kind.handler(c)
				for b.Loop() {
					rate, p99 := drainWith(b, h, c, kind.messages)
					b.ReportMetric(rate, "msg/s")
					b.ReportMetric(float64(p99)/float64(time.Millisecond), "p99-ms")
				}
			})
		}
	}
}

// drainWith hands n messages to h from concurrency goroutines and returns
// the rate and the 99th percentile of one message's handling.
func drainWith(b *testing.B, h worker.Handler, concurrency, n int) (rate float64, p99 time.Duration) {
	b.Helper()
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	took := make([]time.Duration, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t := time.Now()
				if err := h.Handle(context.Background(), &worker.Message{MessageID: strconv.Itoa(i), Body: []byte("x")}); err != nil {
					errs <- err
				}
				took[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatalf("Handle: %v", err)
	}
	slices.Sort(took)
	return float64(n) / elapsed.Seconds(), took[(len(took)*99-1)/100]
}
