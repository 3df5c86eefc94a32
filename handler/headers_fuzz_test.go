package handler

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// fuzzMessage builds a message whose every text property and header comes
// from fuzz input.
func fuzzMessage(b []byte) *worker.Message {
	r := brokertest.NewTableReader(b)
	return &worker.Message{
		Headers:         r.Table(16),
		ContentType:     r.String(),
		ContentEncoding: r.String(),
		CorrelationID:   r.String(),
		ReplyTo:         r.String(),
		MessageID:       r.String(),
		Type:            r.String(),
		AppID:           r.String(),
		Exchange:        r.String(),
		RoutingKey:      r.String(),
		Timestamp:       time.Unix(int64(r.Byte())<<24, 0),
		Attempt:         int(r.Byte()),
		Body:            r.Bytes(256),
	}
}

var fuzzSeeds = [][]byte{
	{},
	{3, 5, 'x', '-', 'a', '\r', '\n', 12, 6, 'a', '\r', '\n', 'X', ':', 'y', 1, 0, 'b', 13, 2, 0, 0xff},
	{1, 3, 0xc3, 0x28, 'a', 15, 2, 1, 'n', 16, 3, 12, 1, 0x7f, 8, 1, 2, 3, 4, 5, 6, 7, 8},
	[]byte("\x02\x05hello\x0c\x05world\x01\x01z\x0e\x01\x02\x03\x04\x05\x06\x07\x08text/plain\n"),
	cloudEventSeed(),
}

// cloudEventSeed is the input of a binary-mode CloudEvent with an
// extension that needs percent-encoding, as fuzzMessage reads it.
func cloudEventSeed() []byte {
	var b []byte
	str := func(s string) { b = append(append(b, byte(len(s))), s...) }
	b = append(b, 6) // six headers, each a name and a string value (kind 12)
	for _, kv := range [][2]string{
		{"cloudEvents:specversion", "1.0"}, {"cloudEvents_id", "1"}, {"cloudEvents:source", "/s"},
		{"cloudEvents:type", "t"}, {"cloudEvents:ext", "a \"b\" 100% \u20ac"}, {"x-other", "o"},
	} {
		str(kv[0])
		b = append(b, 12)
		str(kv[1])
	}
	str("application/json")
	return b
}

// FuzzHTTPHeaders posts messages with arbitrary properties and headers to
// a real HTTP server: net/http refuses to send a request with a bad header
// value, and such a message would then fail on every attempt. Every one
// must be sent, and acked, but one that claims to be a CloudEvent and is
// not a valid one: that one is dead, and says why.
func FuzzHTTPHeaders(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	srv := serveFuzz(f)
	h := NewHTTP(srv, 1)
	f.Cleanup(h.client.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := fuzzMessage(b)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := h.Handle(ctx, m)
		if err != nil && (cloudEventMode(m) == notEvent || !worker.IsPermanent(err) || !strings.HasPrefix(err.Error(), "cloudevent: ")) {
			t.Fatalf("Handle(%+v) = %v, want the request sent and acked", m, err)
		}
	})
}

// serveFuzz starts an HTTP server answering 204 for as long as the fuzz
// target runs, and returns its URL.
func serveFuzz(f *testing.F) string {
	f.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	f.Cleanup(srv.Close)
	return srv.URL + "/hook"
}

// FuzzExecEnvironment: the variables that describe a message to a command
// are well formed whatever the message holds: a NUL in one would keep the
// command from starting, on every attempt.
func FuzzExecEnvironment(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := fuzzMessage(b)
		env := messageEnv(m)
		if len(env) != 7+len(m.Headers) {
			t.Fatalf("messageEnv gave %d variables for %d headers, want %d", len(env), len(m.Headers), 7+len(m.Headers))
		}
		for _, kv := range env {
			name, _, ok := strings.Cut(kv, "=")
			if !ok || !strings.HasPrefix(name, "WARREN_") || strings.IndexByte(kv, 0) >= 0 {
				t.Fatalf("messageEnv gave %q, want WARREN_NAME=value without NUL", kv)
			}
			for _, r := range name {
				if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
					t.Fatalf("messageEnv gave the name %q, want upper-case letters, digits and _", name)
				}
			}
		}
	})
}
