package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
)

// oddPublishings are messages few producers send; each has its name as
// message id.
func oddPublishings() []amqp.Publishing {
	many := amqp.Table{}
	for i := range 3000 {
		many[fmt.Sprintf("h-%04d", i)] = fmt.Sprintf("v-%04d", i)
	}
	big := make([]byte, 16<<20)
	for i := range big {
		big[i] = byte(i*31 + i>>13)
	}
	return []amqp.Publishing{
		{MessageId: "empty-body"},
		{MessageId: "16MiB-body", Body: big},
		{MessageId: "not-utf8", Body: []byte{0xff, 0xfe, 0x00, 0xc3, 0x28, '\n', 0}, ContentType: "text/plain; charset=utf-8",
			Headers: amqp.Table{"text": "a\xffb\x00c"}},
		{MessageId: "every-property", Body: []byte(`{"id":1}`), ContentType: "application/json", ContentEncoding: "identity",
			Priority: 9, CorrelationId: "corr-1", ReplyTo: "replies", Expiration: "3600000",
			Timestamp: time.Date(2026, 11, 27, 14, 33, 42, 0, time.UTC), Type: "order.created", UserId: "guest", AppId: "shop",
			Headers: amqp.Table{"x-tenant": "acme", "n": int32(7), "flag": true}},
		{MessageId: "3000-headers", Body: []byte("many"), Headers: many},
	}
}

// publishAll publishes msgs, persistent and confirmed, to queue.
func publishAll(t *testing.T, queue string, msgs []amqp.Publishing) {
	t.Helper()
	ch := brokertest.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, true, false, m)
		if err != nil || !dc.Wait() {
			t.Fatalf("publish %s: %v, or not confirmed", m.MessageId, err)
		}
	}
}

// received is a request the test HTTP server got.
type received struct {
	header http.Header
	body   []byte
}

// TestOddMessagesReachTheHTTPHandlerIntact: the HTTP endpoint receives
// each odd message's body byte for byte, its properties and every header.
func TestOddMessagesReachTheHTTPHandlerIntact(t *testing.T) {
	var mu sync.Mutex
	got := map[string]received{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[r.Header.Get("X-Warren-Message-Id")] = received{header: r.Header.Clone(), body: body}
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	q := brokertest.Queue(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=http", "WARREN_HTTP_URL="+srv.URL))
	p.waitStatus(t, "/readyz", http.StatusOK)
	msgs := oddPublishings()
	publishAll(t, q, msgs)
	brokertest.WaitFor(t, 60*time.Second, "every message posted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(msgs)
	})
	brokertest.WaitFor(t, 10*time.Second, "the queue empty", func() bool { return brokertest.Ready(t, q) == 0 })
	for _, m := range msgs {
		mu.Lock()
		r := got[m.MessageId]
		mu.Unlock()
		if !bytes.Equal(r.body, m.Body) {
			t.Errorf("%s: endpoint got a body of %d bytes, not the %d published", m.MessageId, len(r.body), len(m.Body))
		}
		headers := 0
		for k := range r.header {
			if strings.HasPrefix(k, "X-Warren-Header-") {
				headers++
			}
		}
		if headers != len(m.Headers) {
			t.Errorf("%s: endpoint got %d X-Warren-Header-* headers, want %d", m.MessageId, headers, len(m.Headers))
		}
	}
	every := got["every-property"].header
	for k, want := range map[string]string{
		"Content-Type": "application/json", "X-Warren-Content-Encoding": "identity", "X-Warren-Correlation-Id": "corr-1",
		"X-Warren-Reply-To": "replies", "X-Warren-Type": "order.created", "X-Warren-App-Id": "shop",
		"X-Warren-Timestamp": "2026-11-27T14:33:42Z", "X-Warren-Header-X-Tenant": "acme", "X-Warren-Header-N": "7",
		"X-Warren-Routing-Key": q, "X-Warren-Attempt": "1",
	} {
		if v := every.Get(k); v != want {
			t.Errorf("every-property: endpoint got %s: %q, want %q", k, v, want)
		}
	}
	if v := got["not-utf8"].header.Get("X-Warren-Header-Text"); v != "a\xffbc" {
		t.Errorf("not-utf8: endpoint got X-Warren-Header-Text: %q, want the bytes less the NUL", v)
	}
	if v := got["3000-headers"].header.Get("X-Warren-Header-H-2999"); v != "v-2999" {
		t.Errorf("3000-headers: endpoint got X-Warren-Header-H-2999: %q, want v-2999", v)
	}
}

// TestOddMessagesReachTheExecHandlerIntact: the command gets each odd
// message's body on stdin byte for byte, and every header in its
// environment.
func TestOddMessagesReachTheExecHandlerIntact(t *testing.T) {
	dir := t.TempDir()
	q := brokertest.Queue(t)
	command := fmt.Sprintf(`cat > %[1]s/"$WARREN_MESSAGE_ID".body && env > %[1]s/"$WARREN_MESSAGE_ID".env`, dir)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+command))
	p.waitStatus(t, "/readyz", http.StatusOK)
	msgs := oddPublishings()
	publishAll(t, q, msgs)
	brokertest.WaitFor(t, 60*time.Second, "every message handled", func() bool {
		return brokertest.Ready(t, q) == 0 && strings.Count(p.out.String(), `"msg":"handler failed"`) == 0 && func() bool {
			envs, _ := filepath.Glob(filepath.Join(dir, "*.env"))
			return len(envs) == len(msgs)
		}()
	})
	for _, m := range msgs {
		body, err := os.ReadFile(filepath.Join(dir, m.MessageId+".body"))
		if err != nil || !bytes.Equal(body, m.Body) {
			t.Errorf("%s: command read %d bytes (%v), not the %d published", m.MessageId, len(body), err, len(m.Body))
		}
		env, err := os.ReadFile(filepath.Join(dir, m.MessageId+".env"))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count("\n"+string(env), "\nWARREN_HEADER_"); n != len(m.Headers) {
			t.Errorf("%s: command saw %d WARREN_HEADER_* variables, want %d", m.MessageId, n, len(m.Headers))
		}
	}
	env, _ := os.ReadFile(filepath.Join(dir, "not-utf8.env"))
	if !bytes.Contains(env, []byte("WARREN_HEADER_TEXT=a\xffbc\n")) {
		t.Errorf("not-utf8: command did not see WARREN_HEADER_TEXT as the bytes less the NUL")
	}
}

// TestHandlerThatNeverReturnsIsBounded: a command that never exits and an
// endpoint that never answers hold their message only for the handler
// timeout; the message is then retried (here: dead at once), and warren
// stays ready for the next one.
func TestHandlerThatNeverReturnsIsBounded(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() {
		close(hang)
		srv.Close()
	})
	for _, tt := range []struct {
		name string
		env  []string
		want string // in the dead-letter reason
	}{
		{"exec", []string{"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=exec sleep 600"}, "command stopped: context deadline exceeded"},
		{"http", []string{"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + srv.URL}, "context deadline exceeded"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			p := startWarren(t, append(append(brokerEnv(q), tt.env...),
				"WARREN_HANDLER_TIMEOUT=1s", "WARREN_MAX_ATTEMPTS=1", "WARREN_CONCURRENCY=1"))
			p.waitStatus(t, "/readyz", http.StatusOK)
			start := time.Now()
			brokertest.Publish(t, q, "never")
			brokertest.WaitFor(t, 20*time.Second, "the message dead", func() bool { return brokertest.Ready(t, q+".dead") == 1 })
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the message died %s after it was published, want about the 1s timeout", d)
			}
			dead := brokertest.Get(t, q+".dead", 1)
			if reason := fmt.Sprint(dead[0].Headers["x-warren-reason"]); !strings.Contains(reason, tt.want) {
				t.Errorf("dead-letter reason = %q, want it to say %q", reason, tt.want)
			}
			for _, path := range []string{"/readyz", "/livez"} {
				if code, body := p.status(path); code != http.StatusOK {
					t.Errorf("GET %s after the timeout = %d %q, want 200", path, code, body)
				}
			}
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Errorf("warren exited %d after SIGTERM, want 0", code)
			}
		})
	}
}
