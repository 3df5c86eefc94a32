package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/internal/brokertest"
)

// runWarrenOut runs the binary to its end and returns its exit code,
// stdout and stderr apart.
func runWarrenOut(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(baseEnv(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run warren %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// TestReplyExec is the RPC of the pika tutorial against the binary with
// an exec handler: the command's standard output answers the requester
// of an exclusive callback queue, of direct reply-to, and warren publish
// -reply, each with its correlation id; standard error stays in the log.
func TestReplyExec(t *testing.T) {
	q := brokertest.Queue(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=tr a-z A-Z; echo to-the-log >&2"))
	p.waitStatus(t, "/readyz", http.StatusOK)
	for _, tt := range []struct {
		name   string
		client func(testing.TB) *brokertest.RPCClient
	}{
		{"callback queue", brokertest.NewRPCClient},
		{"direct reply-to", brokertest.NewDirectRPCClient},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.client(t)
			id := c.Call(t, q, "hello "+tt.name, amqp.Persistent)
			r, ok := c.Reply(t, 20*time.Second)
			if !ok {
				t.Fatal("no reply within 20s")
			}
			if want := strings.ToUpper("hello " + tt.name); string(r.Body) != want || r.CorrelationId != id {
				t.Errorf("reply = %q, correlation id %q; want %q, %q", r.Body, r.CorrelationId, want, id)
			}
		})
	}
	t.Run("warren publish -reply", func(t *testing.T) {
		code, out, errOut := runWarrenOut(t, brokerEnv(q), "publish", "-reply", "one", "two")
		if code != 0 || out != "ONE\nTWO\n" {
			t.Errorf("warren publish -reply one two = %d, stdout %q, stderr %q; want 0, \"ONE\\nTWO\\n\"", code, out, errOut)
		}
	})
	if log := p.out.String(); !strings.Contains(log, "to-the-log") {
		t.Errorf("the command's standard error is not in the log:\n%s", log)
	}
}

// TestReplyHTTP: with an HTTP handler, a 2xx response's body, its
// Content-Type and the headers of WARREN_HTTP_REPLY_HEADERS answer the
// requester; other response headers do not.
func TestReplyHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "req-"+r.Header.Get("X-Warren-Correlation-Id"))
		w.Header().Set("X-Other", "not copied")
		_, _ = w.Write([]byte(`{"len":` + strconv.Itoa(len(body)) + `}`))
	}))
	defer srv.Close()
	q := brokertest.Queue(t)
	p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=http", "WARREN_HTTP_URL="+srv.URL, "WARREN_HTTP_REPLY_HEADERS=X-Request-Id"))
	p.waitStatus(t, "/readyz", http.StatusOK)
	c := brokertest.NewRPCClient(t)
	id := c.Call(t, q, "12345", amqp.Persistent)
	r, ok := c.Reply(t, 20*time.Second)
	if !ok {
		t.Fatal("no reply within 20s")
	}
	if string(r.Body) != `{"len":5}` || r.ContentType != "application/json" || r.CorrelationId != id {
		t.Errorf("reply = %q, %q, correlation id %q; want {\"len\":5}, application/json, %q", r.Body, r.ContentType, r.CorrelationId, id)
	}
	if got := r.Headers["x-request-id"]; got != "req-"+id || r.Headers["x-other"] != nil {
		t.Errorf("reply headers = %v, want x-request-id=req-%s and no x-other", r.Headers, id)
	}
}

// TestPublishReplyFailures: warren publish -reply exits 1 with a clear
// message when no reply comes in time (no worker), and when the reply is
// warren's error reply (a dead request, WARREN_REPLY_ON_DEAD).
func TestPublishReplyFailures(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		q := brokertest.Queue(t)
		brokertest.DeclareQueue(t, q, nil)
		start := time.Now()
		code, out, errOut := runWarrenOut(t, brokerEnv(q), "publish", "-reply", "-timeout", "1s", "anyone?")
		if code != 1 || out != "" || !strings.Contains(errOut, "no reply within -timeout=1s") {
			t.Errorf("warren publish -reply -timeout 1s with no worker = %d, stdout %q, stderr %q; want 1, nothing, no reply within -timeout=1s", code, out, errOut)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("it took %s, want about 1s", d)
		}
	})
	t.Run("unroutable", func(t *testing.T) {
		q := brokertest.Queue(t)
		ex := q + ".ex"
		if err := brokertest.Channel(t).ExchangeDeclare(ex, "direct", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { brokertest.Channel(t).ExchangeDelete(ex, false, false) })
		// The exchange exists and nothing is bound with this key.
		env := append(brokerEnv(q), "WARREN_DECLARE=false", "WARREN_EXCHANGE="+ex)
		code, out, errOut := runWarrenOut(t, env, "publish", "-reply", "-routing-key", "nobody", "-timeout", "20s", "anyone?")
		if code != 1 || out != "" || !strings.Contains(errOut, "message unroutable") {
			t.Errorf("warren publish -reply to no queue = %d, stdout %q, stderr %q; want 1, nothing, message unroutable", code, out, errOut)
		}
	})
	t.Run("dead", func(t *testing.T) {
		q := brokertest.Queue(t)
		p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=exit 65",
			"WARREN_EXEC_DEAD_EXIT_CODES=65", "WARREN_REPLY_ON_DEAD=true"))
		p.waitStatus(t, "/readyz", http.StatusOK)
		code, out, errOut := runWarrenOut(t, brokerEnv(q), "publish", "-reply", "bad")
		if code != 1 || out != "" || !strings.Contains(errOut, "the request is dead: command exited with dead code 65") {
			t.Errorf("warren publish -reply to a dead request = %d, stdout %q, stderr %q; want 1, nothing, the request is dead: command exited with dead code 65", code, out, errOut)
		}
	})
}

// TestReplyOff: with WARREN_REPLY=false a request is handled like any
// other message, for commands and endpoints that answered on their own
// before warren sent replies. An endpoint that answers to its
// X-Warren-Reply-To is the only one to answer; an exec command's standard
// output goes to the log, not to the requester. To see that warren sent
// nothing: a reply is confirmed before the request's ack, so a marker
// published to the callback queue once the request is acked would come
// after it.
func TestReplyOff(t *testing.T) {
	answers := brokertest.Channel(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		// The endpoint's own answer; an error shows as a missing reply.
		_ = answers.PublishWithContext(ctx, "", r.Header.Get("X-Warren-Reply-To"), false, false,
			amqp.Publishing{Body: []byte("from-endpoint"), CorrelationId: r.Header.Get("X-Warren-Correlation-Id")})
		_, _ = w.Write([]byte("from-warren"))
	}))
	defer srv.Close()
	for _, tt := range []struct {
		name    string
		env     []string
		replies []string // the bodies the requester gets, in order
		logged  string   // what the log must hold
	}{
		{"an endpoint that answers itself", []string{"WARREN_HANDLER=http", "WARREN_HTTP_URL=" + srv.URL}, []string{"from-endpoint"}, ""},
		{"exec", []string{"WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=tr a-z A-Z"}, nil, "HELLO"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			p := startWarren(t, append(append(brokerEnv(q), "WARREN_REPLY=false"), tt.env...))
			p.waitStatus(t, "/readyz", http.StatusOK)
			c := brokertest.NewRPCClient(t)
			id := c.Call(t, q, "hello", amqp.Persistent)
			brokertest.WaitFor(t, 20*time.Second, "the request acked", func() bool {
				_, m := p.status("/metrics")
				return metricValue(m, `warren_messages_total{outcome="ack"}`) == 1
			})
			brokertest.Publish(t, c.ReplyTo, "marker")
			var got []string
			for {
				r, ok := c.Reply(t, 20*time.Second)
				if !ok {
					t.Fatalf("the marker did not come within 20s; replies before it: %q", got)
				}
				if string(r.Body) == "marker" {
					break
				}
				if r.CorrelationId != id {
					t.Errorf("reply %q has correlation id %q, want %q", r.Body, r.CorrelationId, id)
				}
				got = append(got, string(r.Body))
			}
			if strings.Join(got, ",") != strings.Join(tt.replies, ",") {
				t.Errorf("the requester got %q, want %q", got, tt.replies)
			}
			_, m := p.status("/metrics")
			if n := metricValue(m, `warren_replies_total{outcome="confirmed"}`); n != 0 {
				t.Errorf(`warren_replies_total{outcome="confirmed"} = %v, want 0`, n)
			}
			if log := p.out.String(); !strings.Contains(log, tt.logged) {
				t.Errorf("the log lacks %q:\n%s", tt.logged, log)
			}
		})
	}
}
