// Package slowlink is a network with a round trip of its own between
// clients and a broker on one machine, for benchmarks and tests.
package slowlink

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
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
