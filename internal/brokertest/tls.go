package brokertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// CA is a certificate authority made by a test, to sign the certificates
// of a TLS listener and of its clients.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA's certificate, PEM-encoded: the content of a CA file.
	PEM []byte
}

// NewCA makes a certificate authority named name, valid for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse CA certificate: %v", err)
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool returns a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// WriteFile writes the CA's certificate to a file in dir and returns its
// path.
func (ca *CA) WriteFile(t testing.TB, dir string) string {
	t.Helper()
	return writeFile(t, filepath.Join(dir, "ca-"+ca.cert.Subject.CommonName+".pem"), ca.PEM)
}

// Cert is a certificate and its key.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// CertOptions say what a certificate is for.
type CertOptions struct {
	// Hosts are the DNS names and IP addresses it is valid for.
	Hosts []string
	// NotBefore and NotAfter bound its validity; zero values mean from an
	// hour ago to a day ahead.
	NotBefore, NotAfter time.Time
	// Client makes it a client certificate, for mutual TLS.
	Client bool
	// ServerAndClient makes it good for both ends of mutual TLS (it wins
	// over Client).
	ServerAndClient bool
	// CommonName is its subject's name; empty means "warren test".
	CommonName string
}

// Issue makes a certificate signed by the CA.
func (ca *CA) Issue(t testing.TB, o CertOptions) Cert {
	t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if o.CommonName == "" {
		o.CommonName = "warren test"
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: o.CommonName},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	switch {
	case o.ServerAndClient:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case o.Client:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("create certificate: %v", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	c := Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatalf("load the certificate made: %v", err)
	}
	return c
}

// WriteFiles writes the certificate and its key to files in dir, named
// after name, and returns their paths.
func (c Cert) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	return writeFile(t, filepath.Join(dir, name+".pem"), c.CertPEM),
		writeFile(t, filepath.Join(dir, name+"-key.pem"), c.KeyPEM)
}

func writeFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TLSProxy terminates TLS in front of a broker, as a load balancer or the
// broker's own TLS listener does: it completes the handshake with its
// certificate, and then forwards the AMQP traffic in the clear.
type TLSProxy struct {
	ln     net.Listener
	target string
	config *tls.Config

	mu       sync.Mutex
	accepted int     // handshakes that succeeded
	refused  []error // handshakes that failed, why
	links    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// NewTLSProxy starts a TLS listener on 127.0.0.1 with cert, forwarding to
// the broker at brokerURL. With clientCAs it requires a client certificate
// they signed (mutual TLS). It stops when the test ends.
func NewTLSProxy(t testing.TB, brokerURL string, cert tls.Certificate, clientCAs *x509.CertPool) *TLSProxy {
	t.Helper()
	config := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAs != nil {
		config.ClientCAs = clientCAs
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return NewTLSProxyConfig(t, brokerURL, config)
}

// NewTLSProxyConfig starts a TLS listener on 127.0.0.1 with config,
// forwarding to the broker at brokerURL.
func NewTLSProxyConfig(t testing.TB, brokerURL string, config *tls.Config) *TLSProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("TLS proxy listen: %v", err)
	}
	p := &TLSProxy{ln: ln, target: hostPort(t, brokerURL), config: config, links: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Port returns the port the proxy listens on.
func (p *TLSProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Handshakes returns how many handshakes succeeded, and the errors of
// those that failed, as the proxy saw them.
func (p *TLSProxy) Handshakes() (int, []error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, append([]error(nil), p.refused...)
}

// Close stops the proxy and cuts its links.
func (p *TLSProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.links {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *TLSProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.links[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *TLSProxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.links, c)
		p.mu.Unlock()
	}()
	tc := tls.Server(c, p.config)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := tc.HandshakeContext(ctx)
	cancel()
	p.mu.Lock()
	if err != nil {
		p.refused = append(p.refused, err)
	} else {
		p.accepted++
	}
	p.mu.Unlock()
	if err != nil {
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.links[up] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.links, up)
		p.mu.Unlock()
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyThenClose(up, tc)
	}()
	copyThenClose(tc, up)
	wg.Wait()
}

// copyThenClose copies src to dst until either ends, then closes both.
func copyThenClose(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
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
}

// hostPort returns the host:port of an AMQP URL.
func hostPort(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse broker URL: %v", err)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "5672")
	}
	return u.Host
}
