package brokertest

import (
	"net"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of the test broker, to cut links and
// refuse connections the way a network does.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	refuse bool
	stall  bool
	deaf   bool // drop what the broker sends only
	links  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewProxy starts a proxy to the test broker; it stops when the test ends.
func NewProxy(t testing.TB) *Proxy {
	t.Helper()
	u, err := url.Parse(URL())
	if err != nil {
		t.Fatalf("parse test broker URL: %v", err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, links: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL returns the test broker's URL with the proxy as its host.
func (p *Proxy) URL() string {
	u, _ := url.Parse(URL())
	u.Host = p.ln.Addr().String()
	return u.String()
}

// Refuse makes the proxy close new connections at once (true), as a
// broker that is down, or forward them again (false).
func (p *Proxy) Refuse(refuse bool) {
	p.mu.Lock()
	p.refuse = refuse
	p.mu.Unlock()
}

// Stall makes the proxy accept traffic and forward none of it (true), as
// a link that died without a reset, or forward it again (false).
func (p *Proxy) Stall(stall bool) {
	p.mu.Lock()
	p.stall = stall
	p.mu.Unlock()
}

// StallFromBroker drops what the broker sends (true) while what the client
// sends still arrives: the client's publishes reach the broker, and their
// confirms never come back.
func (p *Proxy) StallFromBroker(stall bool) {
	p.mu.Lock()
	p.deaf = stall
	p.mu.Unlock()
}

func (p *Proxy) stalled(fromBroker bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stall || (fromBroker && p.deaf)
}

// Cut closes every link open through the proxy.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.links {
		c.Close()
	}
}

// Close stops the proxy and cuts its links.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.links[c] = struct{}{}
		p.links[up] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up, true)
		go p.pipe(up, c, false)
	}
}

// pipe copies from src to dst until either ends, then closes both. While
// the proxy stalls, what it reads is dropped.
func (p *Proxy) pipe(dst, src net.Conn, fromBroker bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.stalled(fromBroker) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.links, dst)
	delete(p.links, src)
	p.mu.Unlock()
}
