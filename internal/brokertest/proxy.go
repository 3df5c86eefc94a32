package brokertest

import (
	"encoding/binary"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy in front of the test broker, to cut links and
// refuse connections the way a network does.
type Proxy struct {
	ln      net.Listener
	target  string
	baseURL string

	mu       sync.Mutex
	refuse   bool
	stall    bool
	deaf     bool // drop what the broker sends only
	midCut   bool // cut the next link half-way through a frame
	midCuts  int  // links cut half-way through a frame
	links    map[net.Conn]struct{}
	accepted int
	wg       sync.WaitGroup
}

// NewProxy starts a proxy to the test broker; it stops when the test ends.
func NewProxy(t testing.TB) *Proxy {
	t.Helper()
	return NewProxyTo(t, URL())
}

// NewProxyTo starts a proxy to the broker at brokerURL; it stops when the
// test ends.
func NewProxyTo(t testing.TB, brokerURL string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: hostPort(t, brokerURL), baseURL: brokerURL, links: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL returns the broker's URL with the proxy as its host.
func (p *Proxy) URL() string {
	u, _ := url.Parse(p.baseURL)
	u.Host = p.ln.Addr().String()
	return u.String()
}

// Accepted returns how many connections the proxy forwarded.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// CutMidFrame makes the proxy cut the next link that receives a content
// frame (a message's header or body: a delivery) from the broker with a
// payload of 2 bytes or more half-way through that payload: the client
// gets part of a frame, then the end of the stream. Method frames (a
// confirm, say) are never cut: a client's connection that only publishes,
// as warren's copies' one, is not the link the cut is for. MidFrameCuts
// counts the cuts done.
func (p *Proxy) CutMidFrame() {
	p.mu.Lock()
	p.midCut = true
	p.mu.Unlock()
}

// MidFrameCuts returns how many links CutMidFrame cut.
func (p *Proxy) MidFrameCuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.midCuts
}

// wantMidCut reports whether a mid-frame cut is wanted.
func (p *Proxy) wantMidCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.midCut
}

// tookMidCut records a mid-frame cut; it reports false if another link
// took it first.
func (p *Proxy) tookMidCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.midCut {
		return false
	}
	p.midCut = false
	p.midCuts++
	return true
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
	p.Stall(false)
	p.StallFromBroker(false)
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
		p.accepted++
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
	var frames frameCursor
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.stalled(fromBroker) {
			chunk := buf[:n]
			cut := -1
			if fromBroker {
				cut = frames.advance(chunk, p.wantMidCut())
			}
			if cut >= 0 {
				if p.tookMidCut() {
					_, _ = dst.Write(chunk[:cut])
					break
				}
				frames.advance(chunk[cut:], false) // another link took the cut
			}
			if _, werr := dst.Write(chunk); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if fromBroker {
		// A stalled link is a partition: the broker closing its end does
		// not reach the client either, until the stall ends or the client
		// gives up on its own.
		for p.stalled(true) && p.open(dst) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.links, dst)
	delete(p.links, src)
	p.mu.Unlock()
}

// open reports whether c is a link the proxy has not closed yet.
func (p *Proxy) open(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.links[c]
	return ok
}

// frameCursor follows the frame boundaries of the AMQP stream a broker
// sends: each frame is a 7-byte header (type, channel, payload size), the
// payload, and an end byte.
type frameCursor struct {
	head  [7]byte
	headN int // bytes of the current header seen
	size  int // payload size of the current frame
	left  int // bytes of its payload and end byte still to come; 0 in a header
}

// AMQP frame types of a message's content.
const (
	frameHeader = 2
	frameBody   = 3
)

// content reports whether the frame the cursor is in carries a message's
// content.
func (c *frameCursor) content() bool {
	return c.head[0] == frameHeader || c.head[0] == frameBody
}

// advance moves the cursor over p. If wantCut, it stops at the first byte
// half-way through the payload of a content frame (header or body) of 2
// bytes of payload or more,
// and returns its offset in p: p[:offset] ends inside that payload, and
// the cursor is at offset. It returns -1 when p holds no such byte.
func (c *frameCursor) advance(p []byte, wantCut bool) int {
	for i := 0; i < len(p); {
		if c.left == 0 {
			c.head[c.headN] = p[i]
			c.headN++
			i++
			if c.headN == len(c.head) {
				c.size = int(binary.BigEndian.Uint32(c.head[3:]))
				c.left = c.size + 1
				c.headN = 0
			}
			continue
		}
		pos := c.size + 1 - c.left // payload bytes already seen
		if wantCut && c.content() && c.size >= 2 && pos <= c.size/2 {
			if cut := i + c.size/2 - pos; cut < len(p) {
				c.left -= cut - i
				return cut
			}
		}
		k := min(c.left, len(p)-i)
		c.left -= k
		i += k
	}
	return -1
}
