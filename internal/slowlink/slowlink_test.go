package slowlink

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestLinkDelaysBothWays: what goes through a Link arrives whole and in
// order, and a round trip takes at least the delay twice.
func TestLinkDelaysBothWays(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	const delay = 20 * time.Millisecond
	l, err := Start("amqp://guest:guest@"+echo.Addr().String()+"/", delay)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.ln.Addr().String())
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
	if took := time.Since(start); took < 2*delay {
		t.Errorf("round trip took %v, want at least %v", took, 2*delay)
	}
	if !bytes.Equal(got, msg) {
		t.Error("the bytes came back changed or out of order")
	}
}
