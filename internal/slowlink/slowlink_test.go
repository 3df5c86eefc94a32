package slowlink

import (
	"bytes"
	"io"
	"net"
	"net/url"
	"os"
	"testing"
	"time"
)

const testDelay = 20 * time.Millisecond

// TestLinkDelaysBothWays: what goes through a Link arrives whole and in
// order, and a round trip takes at least the delay twice.
func TestLinkDelaysBothWays(t *testing.T) {
	l, err := Start(echo(t), testDelay)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	roundTrip(t, l.URL())
}

// TestProcessServesALink: a link in a process of its own carries bytes as
// one in this process does, and ends when closed.
func TestProcessServesALink(t *testing.T) {
	t.Setenv("SLOWLINK_TEST_SERVE", echo(t))
	p, err := StartProcess(os.Args[0], "-test.run=^TestServeInTheChild$")
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, p.URL())
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the link process did not end within 10 s of Close")
	}
	if !p.cmd.ProcessState.Exited() {
		t.Errorf("link process: %v, want an exit", p.cmd.ProcessState)
	}
}

// TestServeInTheChild is the process of TestProcessServesALink.
func TestServeInTheChild(t *testing.T) {
	broker := os.Getenv("SLOWLINK_TEST_SERVE")
	if broker == "" {
		t.Skip("run by TestProcessServesALink")
	}
	if err := Serve(broker, testDelay, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// echo starts a server that sends back what it gets, and returns its URL.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	return "amqp://guest:guest@" + ln.Addr().String() + "/"
}

// roundTrip sends more than one read's worth through the link at
// linkURL and checks that it comes back whole, in order, after at least
// the delay twice.
func roundTrip(t *testing.T, linkURL string) {
	t.Helper()
	u, err := url.Parse(linkURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("0123456789"), 10000) // more than one read
	start := time.Now()
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 2*testDelay {
		t.Errorf("round trip took %v, want at least %v", took, 2*testDelay)
	}
	if !bytes.Equal(got, msg) {
		t.Error("the bytes came back changed or out of order")
	}
}
