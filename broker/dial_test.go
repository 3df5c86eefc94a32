package broker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

// tlsURL returns the test broker's URL through a TLS listener at host and
// port, with the password replaced by pw when pw is not empty.
func tlsURL(t *testing.T, host string, port int, pw string) string {
	t.Helper()
	u, err := url.Parse(brokertest.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "amqps"
	u.Host = fmt.Sprintf("%s:%d", host, port)
	if pw != "" {
		u.User = url.UserPassword(u.User.Username(), pw)
	}
	return u.String()
}

func dial(t *testing.T, d *broker.Dialer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := d.Dial(ctx)
	if err == nil {
		conn.Close()
	}
	return err
}

// TestDialTLS makes real TLS handshakes with a listener in front of the
// broker: a certificate warren can verify connects; every other is refused
// with an error that names the cause and never the password.
func TestDialTLS(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := brokertest.NewCA(t, "warren-ca"), brokertest.NewCA(t, "other-ca")
	good := ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost", "127.0.0.1"}})
	expired := ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	elsewhere := ca.Issue(t, brokertest.CertOptions{Hosts: []string{"broker.example"}})
	client := ca.Issue(t, brokertest.CertOptions{Client: true})
	strangerClient := otherCA.Issue(t, brokertest.CertOptions{Client: true})
	expiredClient := ca.Issue(t, brokertest.CertOptions{Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	clientCert, clientKey := client.WriteFiles(t, dir, "client")
	strangerCert, strangerKey := strangerClient.WriteFiles(t, dir, "stranger")
	expiredCert, expiredKey := expiredClient.WriteFiles(t, dir, "expired")
	caFile, otherCAFile := ca.WriteFile(t, dir), otherCA.WriteFile(t, dir)
	const secret = "Tls-S3cret-pw"

	for _, tt := range []struct {
		name       string
		cert       tls.Certificate
		mutual     bool // the listener requires a client certificate
		files      broker.TLSFiles
		plain      bool   // dial the broker's plain AMQP port with amqps://
		maxVersion uint16 // the listener's highest TLS version; 0: the default
		wantErr    []string
		wantProxy  string // what the listener says of the failed handshake
	}{
		{name: "good CA", cert: good.TLS, files: broker.TLSFiles{CA: caFile}},
		{name: "wrong CA", cert: good.TLS, files: broker.TLSFiles{CA: otherCAFile},
			wantErr: []string{"certificate signed by unknown authority", "WARREN_TLS_CA_FILE"}, wantProxy: "bad certificate"},
		{name: "system roots", cert: good.TLS,
			wantErr: []string{"certificate signed by unknown authority"}},
		{name: "expired certificate", cert: expired.TLS, files: broker.TLSFiles{CA: caFile},
			wantErr: []string{"certificate has expired or is not yet valid", "has expired"}},
		{name: "wrong host name", cert: elsewhere.TLS, files: broker.TLSFiles{CA: caFile},
			wantErr: []string{"certificate is valid for broker.example, not localhost", "does not name the host"}},
		{name: "mutual TLS", cert: good.TLS, mutual: true, files: broker.TLSFiles{CA: caFile, Cert: clientCert, Key: clientKey}},
		{name: "missing client certificate", cert: good.TLS, mutual: true, files: broker.TLSFiles{CA: caFile},
			wantErr: []string{"certificate required", "WARREN_TLS_CERT_FILE"}, wantProxy: "client didn't provide a certificate"},
		// The listener names the CAs it trusts, and a client has no
		// certificate of theirs to send.
		{name: "client certificate of another CA", cert: good.TLS, mutual: true, files: broker.TLSFiles{CA: caFile, Cert: strangerCert, Key: strangerKey},
			wantErr: []string{"certificate required", "signed by a CA it trusts"}, wantProxy: "client didn't provide a certificate"},
		{name: "expired client certificate", cert: good.TLS, mutual: true, files: broker.TLSFiles{CA: caFile, Cert: expiredCert, Key: expiredKey},
			wantErr: []string{"refused warren's client certificate"}, wantProxy: "certificate has expired"},
		{name: "broker without TLS", plain: true, files: broker.TLSFiles{CA: caFile},
			wantErr: []string{"does not speak TLS"}},
		{name: "broker at TLS 1.1", cert: good.TLS, maxVersion: tls.VersionTLS11, files: broker.TLSFiles{CA: caFile},
			wantErr: []string{"protocol version", "TLS 1.2 or later"}, wantProxy: "client offered only unsupported versions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var u string
			var proxy *brokertest.TLSProxy
			if tt.plain {
				plain, err := url.Parse(brokertest.NewProxy(t).URL())
				if err != nil {
					t.Fatal(err)
				}
				u = tlsURL(t, "localhost", mustPort(t, plain.Port()), secret)
			} else {
				var clientCAs = ca.Pool()
				if !tt.mutual {
					clientCAs = nil
				}
				if tt.maxVersion != 0 {
					proxy = brokertest.NewTLSProxyConfig(t, brokertest.URL(), &tls.Config{
						Certificates: []tls.Certificate{tt.cert}, MinVersion: tls.VersionTLS10, MaxVersion: tt.maxVersion})
				} else {
					proxy = brokertest.NewTLSProxy(t, brokertest.URL(), tt.cert, clientCAs)
				}
				u = tlsURL(t, "localhost", proxy.Port(), "")
			}
			d := &broker.Dialer{URLs: []string{u}}
			if tt.files != (broker.TLSFiles{}) {
				d.TLSFiles = &tt.files
			} else {
				d.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			err := dial(t, d)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Dial(%s) = %v, want connected", tt.name, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Dial(%s) = nil, want refused", tt.name)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Dial(%s) = %q, want it to say %q", tt.name, err, want)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Dial(%s) = %q, which holds the password", tt.name, err)
			}
			if proxy != nil && tt.wantProxy != "" {
				// The listener ends its side of the handshake a moment
				// after the client gave up.
				brokertest.WaitFor(t, 5*time.Second, "the listener to refuse the handshake", func() bool {
					_, refused := proxy.Handshakes()
					return len(refused) > 0
				})
				// Two when warren went back to read the alert it missed.
				ok, refused := proxy.Handshakes()
				if ok != 0 || len(refused) == 0 || len(refused) > 2 {
					t.Errorf("listener saw %d handshakes done and %d refused, want one or two refused", ok, len(refused))
				}
				for _, err := range refused {
					if !strings.Contains(err.Error(), tt.wantProxy) {
						t.Errorf("listener refused a handshake with %q, want %q", err, tt.wantProxy)
					}
				}
			}
		})
	}
}

func mustPort(t *testing.T, s string) int {
	t.Helper()
	var p int
	if _, err := fmt.Sscan(s, &p); err != nil {
		t.Fatalf("port %q: %v", s, err)
	}
	return p
}

// TestDialTLSServerNamePerNode: each node of a cluster is verified against
// its own host name, even when the nodes share one TLS configuration.
// amqp091-go writes the first host into an empty ServerName of the
// configuration it is handed; shared, it would check every later node
// against the first one's name.
func TestDialTLSServerNamePerNode(t *testing.T) {
	ca := brokertest.NewCA(t, "warren-ca")
	byName := brokertest.NewTLSProxy(t, brokertest.URL(), ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost"}}).TLS, nil)
	byIP := brokertest.NewTLSProxy(t, brokertest.URL(), ca.Issue(t, brokertest.CertOptions{Hosts: []string{"127.0.0.1"}}).TLS, nil)
	shared := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	for _, u := range []string{tlsURL(t, "localhost", byName.Port(), ""), tlsURL(t, "127.0.0.1", byIP.Port(), "")} {
		if err := dial(t, &broker.Dialer{URLs: []string{u}, TLS: shared}); err != nil {
			t.Errorf("Dial(%s) = %v, want connected", broker.Redact(u), err)
		}
	}
	if shared.ServerName != "" {
		t.Errorf("Dial changed the shared TLS configuration's ServerName to %q, want it left empty", shared.ServerName)
	}
}

// TestDialRereadsFiles: a rotated Secret (the URL file, the TLS files)
// takes effect at the next dial of the same Dialer, without a restart.
func TestDialRereadsFiles(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := brokertest.NewCA(t, "warren-ca"), brokertest.NewCA(t, "other-ca")
	proxy := brokertest.NewTLSProxy(t, brokertest.URL(), ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost"}}).TLS, ca.Pool())
	clientCert, clientKey := ca.Issue(t, brokertest.CertOptions{Client: true}).WriteFiles(t, dir, "client")
	strangerCert, strangerKey := otherCA.Issue(t, brokertest.CertOptions{Client: true}).WriteFiles(t, dir, "stranger")
	caFile := filepath.Join(dir, "ca.pem")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	urlFile := filepath.Join(dir, "url")
	const wrongPassword = "Wr0ng-S3cret"

	// install replaces a file the way a Kubernetes Secret update does:
	// a new file renamed over the old one.
	install := func(dst, src string, content []byte) {
		t.Helper()
		if src != "" {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			content = b
		}
		tmp := dst + ".new"
		if err := os.WriteFile(tmp, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			t.Fatal(err)
		}
	}
	install(urlFile, "", []byte(tlsURL(t, "localhost", proxy.Port(), "")+"\n"))
	install(caFile, "", otherCA.PEM)
	install(certFile, strangerCert, nil)
	install(keyFile, strangerKey, nil)
	d := &broker.Dialer{URLs: []string{"amqp://guest:guest@localhost:1/"}, URLFile: urlFile,
		TLSFiles: &broker.TLSFiles{CA: caFile, Cert: certFile, Key: keyFile}}

	for _, step := range []struct {
		name    string
		rotate  func()
		wantErr string
	}{
		{"wrong CA", func() {}, "unknown authority"},
		{"CA rotated", func() { install(caFile, "", ca.PEM) }, "certificate required"},
		{"client certificate rotated", func() { install(certFile, clientCert, nil); install(keyFile, clientKey, nil) }, ""},
		{"password rotated, file not yet", func() {
			install(urlFile, "", []byte(tlsURL(t, "localhost", proxy.Port(), wrongPassword)))
		}, "username or password not allowed"},
		{"URL file rotated", func() { install(urlFile, "", []byte(tlsURL(t, "localhost", proxy.Port(), ""))) }, ""},
		{"URL file gone", func() { os.Remove(urlFile) }, "read the URL file"},
	} {
		step.rotate()
		err := dial(t, d)
		switch {
		case step.wantErr == "" && err != nil:
			t.Errorf("%s: Dial = %v, want connected", step.name, err)
		case step.wantErr != "" && (err == nil || !strings.Contains(err.Error(), step.wantErr)):
			t.Errorf("%s: Dial = %v, want an error saying %q", step.name, err, step.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), wrongPassword) {
			t.Errorf("%s: Dial = %q, which holds the password", step.name, err)
		}
	}
}

// TestDialEndsWithItsContextDuringTheHandshake: a node that accepts the
// connection and never answers holds the dial only until its context
// ends (a SIGTERM), not for the handshake's limit; meanwhile the Dialer
// says what it waits for.
func TestDialEndsWithItsContextDuringTheHandshake(t *testing.T) {
	done := make(chan struct{})
	addr, accepted := brokertest.Listen(t, func(c net.Conn) {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	})
	defer close(done)
	d := &broker.Dialer{URLs: []string{"amqp://guest:guest@" + addr + "/"}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		conn, _, err := d.Dial(ctx)
		if conn != nil {
			conn.Close()
		}
		errc <- err
	}()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial never reached the listener")
	}
	brokertest.WaitFor(t, 5*time.Second, "the dialer in the handshake", func() bool {
		return d.Step() == "handshake with "+addr
	})
	cancel()
	start := time.Now()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial after its context was cancelled = %v, want context.Canceled", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("Dial returned %v after its context was cancelled, want within 1s", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Dial still running 20s after its context was cancelled")
	}
	if s := d.Step(); s != "" {
		t.Errorf("Step() after Dial returned = %q, want empty", s)
	}
}

// TestDialNotAMQP: a port that answers, but not in AMQP (a database, a
// cache, a web server), gets a hint.
func TestDialNotAMQP(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer string
	}{
		{"redis", "-ERR unknown command 'AMQP'\r\n"},
		{"http", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"},
		{"binary", strings.Repeat("\x01\x00\x00\x00\x00\xff\xff\xff\xff", 4)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := brokertest.Listen(t, func(c net.Conn) {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = c.Read(make([]byte, 8))
				_, _ = io.WriteString(c, tt.answer)
				_, _ = io.Copy(io.Discard, c)
			})
			err := dial(t, &broker.Dialer{URLs: []string{"amqp://guest:guest@" + addr + "/"}})
			if err == nil || !strings.Contains(err.Error(), "is this an AMQP port?") {
				t.Errorf("Dial to a %s port = %v, want the hint \"is this an AMQP port?\"", tt.name, err)
			}
		})
	}
}
