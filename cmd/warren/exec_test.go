package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
)

// TestExecRedirectionsReachTheLog: the binary runs an exec command whose
// trailing redirections it sets up itself (no sh), and what the command
// writes reaches warren's log as sh would have sent it: what goes to
// /dev/null is not there, stderr onto stdout is.
func TestExecRedirectionsReachTheLog(t *testing.T) {
	bin := t.TempDir()
	// The command writes to both outputs, then marks that it is done.
	script := "#!/bin/sh\necho to-stdout\necho to-stderr >&2\ntouch \"$DONE_DIR/$WARREN_MESSAGE_ID\"\n"
	if err := os.WriteFile(filepath.Join(bin, "emit"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		give     string
		want     []string // in the log
		wantNone []string // not in the log
	}{
		{"emit >/dev/null", []string{"to-stderr"}, []string{"to-stdout"}},
		{"emit 2> /dev/null", []string{"to-stdout"}, []string{"to-stderr"}},
		{"emit >/dev/null 2>&1", nil, []string{"to-stdout", "to-stderr", "command output"}},
		{"emit 2>&1", []string{`to-stdout\nto-stderr`}, nil},
	} {
		t.Run(tt.give, func(t *testing.T) {
			done := t.TempDir()
			q := brokertest.Queue(t)
			p := startWarren(t, append(brokerEnv(q), "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND="+tt.give,
				"WARREN_EXEC_ENV=DONE_DIR", "DONE_DIR="+done, "PATH="+bin+":"+os.Getenv("PATH")))
			p.waitStatus(t, "/readyz", http.StatusOK)
			brokertest.Publish(t, q, "m-1")
			brokertest.WaitFor(t, 20*time.Second, "the command done", func() bool {
				_, err := os.Stat(filepath.Join(done, "m-1"))
				return err == nil
			})
			// Its output is logged once it has exited; a drain waits for it.
			// (No wait for /readyz 503 between: the drain of an idle worker
			// ends, and the health server with it, before a poll sees it.)
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 30*time.Second); code != 0 {
				t.Fatalf("warren exited %d after SIGTERM, want 0", code)
			}
			log := p.out.String()
			for _, s := range tt.want {
				if !strings.Contains(log, s) {
					t.Errorf("WARREN_EXEC_COMMAND=%q: %q not in the log:\n%s", tt.give, s, log)
				}
			}
			for _, s := range tt.wantNone {
				if strings.Contains(log, s) {
					t.Errorf("WARREN_EXEC_COMMAND=%q: %q in the log:\n%s", tt.give, s, log)
				}
			}
		})
	}
}
