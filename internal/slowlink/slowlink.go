// Package slowlink is a network with a round trip of its own between
// clients and a broker on one machine, for benchmarks and tests.
package slowlink

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Link is a network between consumers and the broker on one machine: a
// TCP proxy that delays every byte by at least a fixed time in each
// direction, and limits nothing else. On loopback a consumer's round trip to the broker
// is about 0.1 ms; between pods it is several times that, and a consumer
// that waits for it per message (the tutorial's) pays it per message.
type Link struct {
	ln     net.Listener
	broker *url.URL // the broker's URL, its host the target
	delay  time.Duration

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// Start starts a link to the broker at brokerURL that delays each
// direction by delay.
func Start(brokerURL string, delay time.Duration) (*Link, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("parse broker url: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l := &Link{ln: ln, broker: u, delay: delay}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// URL is the broker's URL with its host the link's: a client that dials
// it reaches the broker through the link.
func (l *Link) URL() string {
	u := *l.broker
	u.Host = l.ln.Addr().String()
	return u.String()
}

// Close closes the link and every connection through it.
func (l *Link) Close() {
	l.ln.Close()
	l.mu.Lock()
	l.closed = true
	for _, c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", l.broker.Host)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		if l.closed {
			// Accepted as Close ran: nobody would close these.
			l.mu.Unlock()
			c.Close()
			b.Close()
			return
		}
		l.conns = append(l.conns, c, b)
		l.wg.Add(2)
		l.mu.Unlock()
		go l.pipe(b, c)
		go l.pipe(c, b)
	}
}

// chunk is what one read took from a side, and when it may reach the
// other.
type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst, each read delivered delay after it was made, in
// order: a reader stamps chunks, a writer holds each until its time.
func (l *Link) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	chunks := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range chunks {
			if wait := time.Until(c.at); wait > 0 {
				time.Sleep(wait)
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close()
				for range chunks { // let the reader finish
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunks <- chunk{b: append([]byte(nil), buf[:n]...), at: time.Now().Add(l.delay)}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			break
		}
	}
	close(chunks)
	<-done
}

// Process is a link served by a process of its own (see Serve). A link
// inside the process of a consumer it serves shares that process's
// scheduler with it: the proxy's goroutines hand the consumer its bytes
// without a switch between processes, which no network does. Measured
// on this project's 2-core machine, a plain consumer beside the link in
// one process drained 1.2-1.4x as fast as the same consumer in a process
// of its own through the same link.
type Process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
}

// StartProcess runs name with args, a command that calls Serve, and
// reads the link's URL from it.
func StartProcess(name string, args ...string) (*Process, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("link process: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("link process: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start link process: %w", err)
	}
	p := &Process{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("read the link's url: %w", err)
	}
	p.url = strings.TrimSpace(line)
	if u, err := url.Parse(p.url); err != nil || u.Host == "" {
		p.Close()
		return nil, fmt.Errorf("link process said %q, not its url", p.url)
	}
	return p, nil
}

// URL is the broker's URL through the link.
func (p *Process) URL() string { return p.url }

// Close ends the link process and waits for it.
func (p *Process) Close() {
	p.stdin.Close()
	_ = p.cmd.Wait()
}

// Serve starts a link to brokerURL that delays each direction by delay,
// writes its URL and a newline to out, and serves until in ends: the end
// of its parent's pipe, even when the parent is killed.
func Serve(brokerURL string, delay time.Duration, in io.Reader, out io.Writer) error {
	l, err := Start(brokerURL, delay)
	if err != nil {
		return err
	}
	defer l.Close()
	if _, err := fmt.Fprintln(out, l.URL()); err != nil {
		return fmt.Errorf("write url: %w", err)
	}
	_, _ = io.Copy(io.Discard, in)
	return nil
}
