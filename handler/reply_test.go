package handler

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warren-mq/warren/worker"
)

// TestHTTPReply: with reply_to, a 2xx response's body and Content-Type
// are the reply, and the headers of ReplyHeaders (several values joined)
// its AMQP headers; a body over ReplyMaxBytes makes the message dead, not
// a truncated reply; without reply_to there is no reply; a failure has
// none.
func TestHTTPReply(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "r-1")
		w.Header().Add("Etag", `"a"`)
		w.Header().Add("Etag", `"b"`)
		w.Header().Set("X-Secret", "not copied")
		if string(body) == "fail" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"answer":"` + strings.ToUpper(string(body)) + `"}`))
	})
	for _, tt := range []struct {
		name      string
		body      string
		replyTo   string
		max       int64
		wantReply string // "" for none
		wantDead  bool
		wantErr   bool
	}{
		{name: "answer", body: "hi", replyTo: "callback", wantReply: `{"answer":"HI"}`},
		{name: "no reply_to", body: "hi"},
		{name: "at the limit", body: "hi", replyTo: "callback", max: 15, wantReply: `{"answer":"HI"}`},
		{name: "over the limit", body: "hi", replyTo: "callback", max: 14, wantDead: true, wantErr: true},
		{name: "failure", body: "fail", replyTo: "callback", wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHTTP(t, srv.URL)
			h.ReplyMaxBytes = tt.max
			h.ReplyHeaders = []string{"X-Request-Id", "ETag", "X-Missing"}
			m := &worker.Message{Body: []byte(tt.body), ReplyTo: tt.replyTo}
			err := h.Handle(context.Background(), m)
			if (err != nil) != tt.wantErr || worker.IsPermanent(err) != tt.wantDead {
				t.Fatalf("Handle() = %v, want error %v, dead %v", err, tt.wantErr, tt.wantDead)
			}
			if tt.wantDead && !strings.Contains(err.Error(), "WARREN_REPLY_MAX_BYTES") {
				t.Errorf("Handle() = %v, want it to name WARREN_REPLY_MAX_BYTES", err)
			}
			if tt.wantReply == "" {
				if m.Reply != nil && !tt.wantErr {
					t.Errorf("Reply = %+v, want none", m.Reply)
				}
				return
			}
			r := m.Reply
			if r == nil {
				t.Fatal("Reply = nil, want the response")
			}
			if string(r.Body) != tt.wantReply || r.ContentType != "application/json" {
				t.Errorf("Reply = %q, %q; want %q, application/json", r.Body, r.ContentType, tt.wantReply)
			}
			want := map[string]any{"x-request-id": "r-1", "etag": `"a", "b"`}
			if len(r.Headers) != len(want) || r.Headers["x-request-id"] != want["x-request-id"] || r.Headers["etag"] != want["etag"] {
				t.Errorf("Reply.Headers = %v, want %v", r.Headers, want)
			}
		})
	}
}

// TestExecReply: with reply_to, the command's standard output is the
// reply and its standard error goes to the log; output over ReplyMaxBytes
// makes the message dead; a failed command sends none, its output logged;
// without reply_to, standard output goes to the log as before.
func TestExecReply(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		name      string
		command   string
		body      string
		replyTo   string
		max       int64
		wantReply string
		wantLog   string // the output logged, "" for none
		wantDead  bool
		wantErr   bool
	}{
		{name: "plain command", command: "tr a-z A-Z", body: "hello", replyTo: "cb", wantReply: "HELLO"},
		{name: "shell, stderr logged", command: "tr a-z A-Z; echo oops >&2", body: "hello", replyTo: "cb", wantReply: "HELLO", wantLog: "oops\n"},
		{name: "stdout to /dev/null", command: "tr a-z A-Z >/dev/null", body: "hello", replyTo: "cb", wantReply: ""},
		{name: "no reply_to", command: "tr a-z A-Z", body: "hello", wantLog: "HELLO"},
		{name: "at the limit", command: "head -c 1024 /dev/zero", replyTo: "cb", max: 1024, wantReply: strings.Repeat("\x00", 1024)},
		{name: "over the limit", command: "head -c 1048577 /dev/zero", replyTo: "cb", max: 1 << 20, wantDead: true, wantErr: true},
		{name: "failed", command: "echo partial; exit 3", replyTo: "cb", wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, logs := newExec(t, tt.command)
			e.ReplyMaxBytes = tt.max
			m := &worker.Message{Body: []byte(tt.body), ReplyTo: tt.replyTo}
			err := e.Handle(context.Background(), m)
			if (err != nil) != tt.wantErr || worker.IsPermanent(err) != tt.wantDead {
				t.Fatalf("Handle(%q) = %v, want error %v, dead %v", tt.command, err, tt.wantErr, tt.wantDead)
			}
			switch {
			case tt.wantErr || tt.replyTo == "":
				if m.Reply != nil {
					t.Errorf("Handle(%q): Reply = %q, want none", tt.command, m.Reply.Body)
				}
			case m.Reply == nil:
				t.Errorf("Handle(%q): no Reply, want %q", tt.command, tt.wantReply)
			case string(m.Reply.Body) != tt.wantReply:
				t.Errorf("Handle(%q): Reply = %.40q, want %.40q", tt.command, m.Reply.Body, tt.wantReply)
			}
			var logged []string
			for _, e := range logs.All() {
				if out, ok := e.ContextMap()["output"].(string); ok {
					logged = append(logged, out)
				}
			}
			if tt.name == "failed" {
				if len(logged) != 1 || logged[0] != "partial\n" {
					t.Errorf("Handle(%q) logged %q, want the failed command's standard output", tt.command, logged)
				}
				return
			}
			if want := tt.wantLog; (want == "") != (len(logged) == 0) || want != "" && logged[0] != want {
				t.Errorf("Handle(%q) logged %q, want %q", tt.command, logged, want)
			}
		})
	}
}

// TestHTTPReplyCloudEvent: a response that is a CloudEvent in binary mode
// answers with its attributes as cloudEvents: properties beside the
// headers of ReplyHeaders; one that claims to be an event and is not a
// valid one makes the message dead.
func TestHTTPReplyCloudEvent(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ce-specversion", "1.0")
		w.Header().Set("ce-type", "com.example.answer")
		w.Header().Set("ce-source", "/answers")
		if string(body) != "invalid" {
			w.Header().Set("ce-id", "a-1")
		}
		w.Header().Set("X-Request-Id", "r-1")
		_, _ = w.Write([]byte(`{}`))
	})
	h := newHTTP(t, srv.URL)
	h.ReplyHeaders = []string{"X-Request-Id"}
	m := &worker.Message{Body: []byte("valid"), ReplyTo: "cb"}
	if err := h.Handle(context.Background(), m); err != nil || m.Reply == nil {
		t.Fatalf("Handle() = %v, reply %v; want nil and a reply", err, m.Reply)
	}
	want := map[string]any{
		CloudEventsPropertyPrefix + "specversion": "1.0", CloudEventsPropertyPrefix + "type": "com.example.answer",
		CloudEventsPropertyPrefix + "source": "/answers", CloudEventsPropertyPrefix + "id": "a-1", "x-request-id": "r-1",
	}
	if len(m.Reply.Headers) != len(want) || m.Reply.ContentType != "application/json" {
		t.Errorf("Reply = %v, %q; want %v, application/json", m.Reply.Headers, m.Reply.ContentType, want)
	}
	for k, v := range want {
		if m.Reply.Headers[k] != v {
			t.Errorf("Reply.Headers[%s] = %v, want %v", k, m.Reply.Headers[k], v)
		}
	}
	m = &worker.Message{Body: []byte("invalid"), ReplyTo: "cb"}
	if err := h.Handle(context.Background(), m); !worker.IsPermanent(err) || !strings.Contains(err.Error(), "id") {
		t.Errorf("Handle() of a response event without id = %v, want dead naming id", err)
	}
}

// TestExecReplyRedirections: for a request with reply_to, standard output
// is the reply and the redirections apply from there as sh's would,
// whether warren sets them up itself or sh does: 2>&1 sends standard
// error into the reply too, 1>&2 sends standard output to the log.
func TestExecReplyRedirections(t *testing.T) {
	verifyNoLeaks(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "emit"), []byte("#!/bin/sh\necho out\necho err >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		command   string
		wantReply string
		wantLog   string
	}{
		{"emit", "out\n", "err\n"},
		{"emit 2>&1", "out\nerr\n", ""},
		{"emit 1>&2", "", "out\nerr\n"},
		{"emit 2>/dev/null", "out\n", ""},
		{"emit >/dev/null", "", "err\n"},
		{"emit 2>&1; true", "out\nerr\n", ""}, // through sh
		{"emit; true", "out\n", "err\n"},
	} {
		t.Run(tt.command, func(t *testing.T) {
			e, logs := newExec(t, tt.command, "PATH="+bin+":"+os.Getenv("PATH"))
			m := &worker.Message{ReplyTo: "cb"}
			if err := e.Handle(context.Background(), m); err != nil || m.Reply == nil {
				t.Fatalf("Handle(%q) = %v, reply %v; want nil and a reply", tt.command, err, m.Reply)
			}
			var logged string
			for _, e := range logs.FilterMessage("command output").All() {
				logged += e.ContextMap()["output"].(string)
			}
			if string(m.Reply.Body) != tt.wantReply || logged != tt.wantLog {
				t.Errorf("Handle(%q): reply %q, logged %q; want %q, %q", tt.command, m.Reply.Body, logged, tt.wantReply, tt.wantLog)
			}
		})
	}
}
