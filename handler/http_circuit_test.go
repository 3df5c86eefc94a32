package handler

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/warren-mq/warren/worker"
)

// TestHTTPUnavailable: the HTTP handler marks as Unavailable (the
// endpoint is down, the circuit may open) refused connections, timeouts,
// 5xx, 408 and 429, and nothing that is a verdict on the message.
func TestHTTPUnavailable(t *testing.T) {
	for _, tt := range []struct {
		give int // status; 0: nothing listens; -1: no answer in time
		want bool
	}{
		{0, true},
		{-1, true},
		{http.StatusServiceUnavailable, true},
		{http.StatusInternalServerError, true},
		{http.StatusBadGateway, true},
		{http.StatusTooManyRequests, true},
		{http.StatusRequestTimeout, true},
		{http.StatusUnprocessableEntity, false}, // dead: a verdict on the message
		{http.StatusNotFound, false},
		{http.StatusUnauthorized, false},
		{http.StatusNoContent, false},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // so that the server sees the client go
			if tt.give == -1 {
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
				return
			}
			w.WriteHeader(tt.give)
		}))
		url := srv.URL
		if tt.give == 0 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			url = "http://" + l.Addr().String()
			l.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := NewHTTP(url, 1).Handle(ctx, &worker.Message{Body: []byte("x")})
		cancel()
		srv.Close()
		if got := worker.IsUnavailable(err); got != tt.want {
			t.Errorf("status %d: IsUnavailable(%v) = %v, want %v", tt.give, err, got, tt.want)
		}
	}
}
