package handler_test

import (
	"bytes"
	"context"
	"os"
	"testing"

	"go.uber.org/zap"

	"github.com/warren-mq/warren/handler"
	"github.com/warren-mq/warren/worker"
)

// BenchmarkExec measures the exec handler's cost per message, a 100-byte
// body each: commands without shell syntax, one with a redirection to
// /dev/null, which warren sets up itself, and a pipeline, which runs
// through /bin/sh.
func BenchmarkExec(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 100)
	for _, bm := range []struct {
		name    string
		command string
	}{
		{"true", "true"},
		{"cat", "cat"}, // the body comes back as output, kept for the log
		{"cat >/dev/null", "cat >/dev/null"},
		{"shell pipeline", "cat | cat >/dev/null"},
	} {
		b.Run(bm.name, func(b *testing.B) {
			e := &handler.Exec{Command: bm.command, Env: []string{"PATH=" + os.Getenv("PATH")}, Logger: zap.NewNop()}
			m := &worker.Message{MessageID: "m-1", Body: body}
			b.ReportAllocs()
			for b.Loop() {
				if err := e.Handle(context.Background(), m); err != nil {
					b.Fatalf("Handle(%q) = %v", bm.command, err)
				}
			}
		})
	}
}
