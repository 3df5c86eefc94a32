package handler_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/warren-mq/warren/config"
	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/worker"
)

// load returns the configuration of env, on top of a queue name.
func load(t *testing.T, env map[string]string) *config.Config {
	t.Helper()
	t.Setenv("WARREN_QUEUE", "q")
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, err := config.Load()
	if err != nil {
		t.Fatalf("config.Load() with %v = %v, want nil", env, err)
	}
	return cfg
}

// TestNew: every handler kind the configuration accepts gets a handler of
// its own; the log handler is the default.
func TestNew(t *testing.T) {
	for _, tt := range []struct {
		give    map[string]string
		want    string // the handler's type
		wantLog bool   // Handle logs the message: the log handler
	}{
		{give: nil, want: "worker.HandlerFunc", wantLog: true},
		{give: map[string]string{"WARREN_HANDLER": config.HandlerLog}, want: "worker.HandlerFunc", wantLog: true},
		{give: map[string]string{"WARREN_HANDLER": config.HandlerNoop}, want: "worker.HandlerFunc"},
		{give: map[string]string{"WARREN_HANDLER": config.HandlerExec, "WARREN_EXEC_COMMAND": "true"}, want: "*handler.Exec"},
		{give: map[string]string{"WARREN_HANDLER": config.HandlerHTTP, "WARREN_HTTP_URL": "http://127.0.0.1:1/"}, want: "*handler.HTTP"},
	} {
		t.Run(fmt.Sprint(tt.give), func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			h := handler.New(load(t, tt.give), zap.New(core))
			if got := fmt.Sprintf("%T", h); got != tt.want {
				t.Fatalf("New(%v) = %s, want %s", tt.give, got, tt.want)
			}
			if tt.want != "worker.HandlerFunc" {
				return
			}
			if err := h.Handle(context.Background(), &worker.Message{MessageID: "m-1"}); err != nil {
				t.Fatalf("New(%v).Handle() = %v, want nil", tt.give, err)
			}
			logged := logs.FilterLoggerName("message").FilterMessage("message").Len() == 1
			if logged != tt.wantLog {
				t.Errorf("New(%v).Handle() logged the message: %v, want %v", tt.give, logged, tt.wantLog)
			}
		})
	}
}

// TestNewHTTP: the HTTP handler's dead statuses come from the
// configuration, whose default is the library's.
func TestNewHTTP(t *testing.T) {
	for _, tt := range []struct {
		give string // WARREN_HTTP_DEAD_STATUSES; "" for unset
		want []int
	}{
		{"", handler.DefaultHTTPDeadStatuses},
		{"404,503", []int{404, 503}},
	} {
		env := map[string]string{"WARREN_HANDLER": config.HandlerHTTP, "WARREN_HTTP_URL": "http://127.0.0.1:1/"}
		if tt.give != "" {
			env["WARREN_HTTP_DEAD_STATUSES"] = tt.give
		}
		h := handler.New(load(t, env), zap.NewNop()).(*handler.HTTP)
		if !slices.Equal(h.DeadStatuses, tt.want) {
			t.Errorf("New() with WARREN_HTTP_DEAD_STATUSES=%q: DeadStatuses = %v, want %v", tt.give, h.DeadStatuses, tt.want)
		}
	}
}

// TestNewExec: the exec handler runs the configured command with its dead
// exit codes, from warren's environment filtered: what WARREN_EXEC_ENV
// names passes, nothing else of warren's.
func TestNewExec(t *testing.T) {
	t.Setenv("PASSED_ON", "yes")
	t.Setenv("SIDECAR_TOKEN", "s3cret")
	e := handler.New(load(t, map[string]string{
		"WARREN_HANDLER":              config.HandlerExec,
		"WARREN_EXEC_COMMAND":         "cat >/dev/null",
		"WARREN_EXEC_DEAD_EXIT_CODES": "65,70",
		"WARREN_EXEC_ENV":             "PASSED_ON",
	}), zap.NewNop()).(*handler.Exec)
	if e.Command != "cat >/dev/null" || !slices.Equal(e.DeadExitCodes, []int{65, 70}) {
		t.Errorf("New() = Exec{Command: %q, DeadExitCodes: %v}, want cat >/dev/null and [65 70]", e.Command, e.DeadExitCodes)
	}
	if !slices.Contains(e.Env, "PASSED_ON=yes") || slices.Contains(e.Env, "SIDECAR_TOKEN=s3cret") || slices.Contains(e.Env, "WARREN_QUEUE=q") {
		t.Errorf("New().Env = %q, want PASSED_ON and neither SIDECAR_TOKEN nor WARREN_QUEUE", e.Env)
	}
	if e.Logger == nil {
		t.Error("New().Logger = nil, want the command's output logged")
	}
}

// TestNewReplySettings: the reply's size limit and the HTTP headers a
// reply carries come from the configuration, whose default limit is the
// library's.
func TestNewReplySettings(t *testing.T) {
	for _, tt := range []struct {
		give        map[string]string
		wantMax     int64
		wantHeaders []string
		wantNoReply bool
	}{
		{give: map[string]string{}, wantMax: handler.DefaultReplyMaxBytes},
		{give: map[string]string{"WARREN_REPLY_MAX_BYTES": "64Ki", "WARREN_HTTP_REPLY_HEADERS": "X-Request-Id, ETag"},
			wantMax: 64 << 10, wantHeaders: []string{"X-Request-Id", "ETag"}},
		{give: map[string]string{"WARREN_REPLY": "false"}, wantMax: handler.DefaultReplyMaxBytes, wantNoReply: true},
	} {
		// A subtest each: load sets the variables until its test ends.
		t.Run(fmt.Sprint(tt.give), func(t *testing.T) {
			env := map[string]string{"WARREN_HANDLER": config.HandlerHTTP, "WARREN_HTTP_URL": "http://127.0.0.1:1/"}
			for k, v := range tt.give {
				env[k] = v
			}
			h := handler.New(load(t, env), zap.NewNop()).(*handler.HTTP)
			if h.ReplyMaxBytes != tt.wantMax || !slices.Equal(h.ReplyHeaders, tt.wantHeaders) || h.NoReply != tt.wantNoReply {
				t.Errorf("New() with %v: HTTP{ReplyMaxBytes: %d, ReplyHeaders: %q, NoReply: %v}, want %d, %q, %v", tt.give, h.ReplyMaxBytes, h.ReplyHeaders, h.NoReply, tt.wantMax, tt.wantHeaders, tt.wantNoReply)
			}
			env["WARREN_HANDLER"], env["WARREN_EXEC_COMMAND"] = config.HandlerExec, "cat"
			e := handler.New(load(t, env), zap.NewNop()).(*handler.Exec)
			if e.ReplyMaxBytes != tt.wantMax || e.NoReply != tt.wantNoReply {
				t.Errorf("New() with %v: Exec{ReplyMaxBytes: %d, NoReply: %v}, want %d, %v", tt.give, e.ReplyMaxBytes, e.NoReply, tt.wantMax, tt.wantNoReply)
			}
		})
	}
}
