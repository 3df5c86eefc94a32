package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
)

// TestPublishStdinLongLine: a line far longer than a bufio.Scanner takes
// by default (17 MB) is published like the others, and so is every line
// after it.
func TestPublishStdinLongLine(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	big := strings.Repeat("x", 17<<20)
	code, out := runWarren(t, brokerEnv(q), "first\n"+big+"\nthird\n", "publish")
	if code != 0 || !strings.Contains(out, "published 3 of 3 messages") {
		t.Fatalf("warren publish of 3 lines, the second of 17 MB = %d, %q; want 0, published 3 of 3", code, out)
	}
	var sizes []int
	for _, d := range brokertest.Get(t, q, 10) {
		sizes = append(sizes, len(d.Body))
	}
	if want := []int{5, len(big), 5}; fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("queue holds bodies of %v bytes, want %v", sizes, want)
	}
}

func TestReadLine(t *testing.T) {
	for _, tt := range []struct {
		name    string
		give    io.Reader
		want    []string
		wantErr string
	}{
		{name: "lines", give: strings.NewReader("a\nbb\r\n\nccc"), want: []string{"a", "bb", "", "ccc"}},
		{name: "longer than the buffer", give: strings.NewReader("0123456789\n0123456789012\n"), want: []string{"0123456789", "0123456789012"}},
		{name: "at the limit with CRLF", give: strings.NewReader("0123456789abcdef\r\n"), want: []string{"0123456789abcdef"}},
		{name: "over the limit", give: strings.NewReader("a\n0123456789abcdefg\nb\n"), want: []string{"a"}, wantErr: "line 2: longer than 16 bytes"},
		{name: "read error", give: io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(errors.New("disk on fire"))), want: []string{"a"}, wantErr: "line 2: read: disk on fire"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &lineReader{r: bufio.NewReaderSize(tt.give, 16), max: 16}
			var got []string
			for line := range r.lines(context.Background()) {
				got = append(got, string(line))
			}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Errorf("lines = %q, want %q", got, tt.want)
			}
			if (r.err == nil) != (tt.wantErr == "") || r.err != nil && !strings.Contains(r.err.Error(), tt.wantErr) {
				t.Errorf("lines ended with %v, want %q", r.err, tt.wantErr)
			}
		})
	}
}

// TestPublishStdinUnreadableFails: stdin that cannot be read (here a
// directory) fails the command, naming the line; it never passes for an
// empty input.
func TestPublishStdinUnreadableFails(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(binary, "publish")
	cmd.Env = append(baseEnv(), brokerEnv(q)...)
	cmd.Stdin = dir
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "stdin line 1: read:") {
		t.Errorf("warren publish < a directory = %d, %q; want 1 and the line that could not be read", code, out)
	}
}

// TestPublishEndsOnSIGTERMWhileReadingStdin: a signal ends warren publish
// while stdin, still open, has nothing more to give, and it says what it
// published.
func TestPublishEndsOnSIGTERMWhileReadingStdin(t *testing.T) {
	q := brokertest.Queue(t)
	brokertest.DeclareQueue(t, q, nil)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	p := startWarrenWithStdin(t, brokerEnv(q), pr, "publish")
	pr.Close()
	if _, err := pw.WriteString("first\n"); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 20*time.Second, "the first line in the queue", func() bool { return brokertest.Ready(t, q) == 1 })
	p.signal(t, syscall.SIGTERM)
	code := p.wait(t, 5*time.Second)
	// The message is stored; its confirm may still be on its way.
	out := p.out.String()
	said := strings.Contains(out, "published 1 of 1 messages") ||
		strings.Contains(out, "published 0 of 1 messages (1 unconfirmed: it may or may not have reached the queue)")
	if code != 1 || !said || !strings.Contains(out, "interrupted") {
		t.Errorf("warren publish after SIGTERM = %d, %q; want 1, 1 of 1 published (or unconfirmed), interrupted", code, out)
	}
}

// TestPublishLeavesTheTopologyToTheWorker: warren publish only checks that
// its queue exists; run before a worker whose settings differ (here a
// classic worker after a quorum publish), it leaves nothing the worker
// would refuse. With -declare it declares the topology.
func TestPublishLeavesTheTopologyToTheWorker(t *testing.T) {
	q := brokertest.Queue(t)
	quorum := append(brokerEnv(q), "WARREN_QUEUE_TYPE=quorum")
	code, out := runWarren(t, quorum, "", "publish", "early")
	if code != 1 || !strings.Contains(out, q) || !strings.Contains(out, "-declare") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("warren publish before the queue exists = %d, %q; want 1 and one line naming the queue and -declare", code, out)
	}
	p := startWarren(t, brokerEnv(q)) // classic
	p.waitStatus(t, "/readyz", http.StatusOK)
	if code, out := runWarren(t, quorum, "", "publish", "later"); code != 0 || !strings.Contains(out, "published 1 of 1 messages") {
		t.Errorf("warren publish once the worker declared the queue = %d, %q; want 0, 1 of 1 published", code, out)
	}

	q2 := brokertest.Queue(t)
	if code, out := runWarren(t, brokerEnv(q2), "", "publish", "-declare", "x"); code != 0 || brokertest.Ready(t, q2) != 1 {
		t.Errorf("warren publish -declare = %d, %q, %d messages in the queue; want 0, 1", code, out, brokertest.Ready(t, q2))
	}
}

// TestSubcommandsSpeakPlainly: the subcommands' errors are one plain line
// on stderr, named after the command, with the exit code of the README.
func TestSubcommandsSpeakPlainly(t *testing.T) {
	closed := freeAddr(t)
	for _, tt := range []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     string
	}{
		{"publish without a queue", nil, []string{"publish", "x"}, 2, "warren publish: WARREN_QUEUE is not set: want the queue to publish to"},
		{"dead list without a queue", nil, []string{"dead", "list"}, 2, "warren dead: WARREN_QUEUE is not set: want the queue whose dead-letter queue"},
		{"publish to no broker", []string{"WARREN_QUEUE=q", "WARREN_AMQP_URL=amqp://guest:Secret7@" + closed + "/"}, []string{"publish", "x"}, 1, "warren publish: dial "},
		{"dead list of no broker", []string{"WARREN_QUEUE=q", "WARREN_AMQP_URL=amqp://guest:Secret7@" + closed + "/"}, []string{"dead", "list"}, 1, "warren dead list: dial "},
		{"dead list of no queue", brokerEnv(brokertest.Name(t)), []string{"dead", "list"}, 1, "warren dead list: list dead messages: inspect queue"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runWarren(t, tt.env, "", tt.args...)
			if code != tt.wantCode || !strings.HasPrefix(out, tt.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 || strings.Contains(out, "Secret7") {
				t.Errorf("warren %v = %d, %q; want %d and one line starting %q, no password", tt.args, code, out, tt.wantCode, tt.want)
			}
		})
	}
}
