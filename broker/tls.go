package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TLSFiles names the PEM files of a TLS client configuration. Mounted from
// a Kubernetes Secret, they change when the Secret is rotated; a Dialer
// with TLSFiles reads them again on every dial.
type TLSFiles struct {
	// CA is a bundle of the CAs that sign the broker's certificate; empty
	// means the system roots.
	CA string
	// Cert and Key are the client certificate and its key, for mutual TLS;
	// both or neither.
	Cert, Key string
}

// Load reads the files into a TLS client configuration: certificate
// verification on, TLS 1.2 at least.
func (f TLSFiles) Load() (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pool, err := LoadCA(f.CA)
		if err != nil {
			return nil, err
		}
		t.RootCAs = pool
	}
	if f.Cert != "" || f.Key != "" {
		cert, err := LoadKeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// LoadCA reads a PEM bundle of CA certificates.
func LoadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("read CA file %q: no PEM certificate in it", path)
	}
	return pool, nil
}

// LoadKeyPair reads a PEM client certificate and its key.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("read client certificate: want both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read client certificate %q and key %q: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// ParseURLs splits a comma-separated list of broker URLs, as
// WARREN_AMQP_URL and its file hold them, dropping blanks around each.
func ParseURLs(raw string) []string {
	var urls []string
	for _, u := range strings.Split(raw, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// causeless reports whether a dial error says nothing of its cause: with
// TLS 1.3 a server checks the client certificate after the client's side
// of the handshake is done, and its alert may end the connection before
// amqp091-go reads it, which then reports only that the connection is
// closed.
func causeless(err error) bool {
	text := err.Error()
	return errors.Is(err, amqp.ErrClosed) || strings.Contains(text, "EOF") ||
		strings.Contains(text, "connection reset by peer") || strings.Contains(text, "broken pipe") ||
		strings.Contains(text, "use of closed network connection")
}

// probeTLS dials rawURL again, completes the TLS handshake and starts the
// AMQP one, to read why the broker ends the session: it returns the TLS
// alert it sent ("remote error: tls: certificate required"), or nil if
// there was none.
func probeTLS(ctx context.Context, rawURL string, config *tls.Config) error {
	uri, err := amqp.ParseURI(rawURL)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: config}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	if err != nil {
		return alertOf(err)
	}
	defer c.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(deadline)
	}
	if _, err := c.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		return alertOf(err)
	}
	_, err = c.Read(make([]byte, 1))
	return alertOf(err)
}

// alertOf returns err if it is a TLS alert from the peer, else nil.
func alertOf(err error) error {
	if err != nil && strings.Contains(err.Error(), "remote error: tls: ") {
		return err
	}
	return nil
}

// explain adds to a dial error what it means and what to change, for the
// failures of a TLS handshake and of a login, whose library messages name
// the symptom rather than the fix.
func explainDial(err error) error {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		aerr      *amqp.Error
	)
	text := err.Error()
	switch {
	case errors.As(err, &unknownCA):
		return fmt.Errorf("tls: %w (the broker's certificate is not signed by a CA warren trusts: set WARREN_TLS_CA_FILE to the CA that signs it)", err)
	case errors.As(err, &hostname):
		return fmt.Errorf("tls: %w (the broker's certificate does not name the host of the URL: connect by a name the certificate holds)", err)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return fmt.Errorf("tls: %w (the broker's certificate has expired or is not valid yet)", err)
	case errors.As(err, &invalid):
		return fmt.Errorf("tls: %w (the broker's certificate was refused)", err)
	case strings.Contains(text, "tls: certificate required"):
		return fmt.Errorf("%w (the broker requires a client certificate signed by a CA it trusts: set WARREN_TLS_CERT_FILE and WARREN_TLS_KEY_FILE to one)", err)
	case strings.Contains(text, "remote error: tls: bad certificate"), strings.Contains(text, "remote error: tls: expired certificate"),
		strings.Contains(text, "remote error: tls: revoked certificate"), strings.Contains(text, "remote error: tls: unsupported certificate"),
		strings.Contains(text, "remote error: tls: unknown certificate"): // and "unknown certificate authority"
		return fmt.Errorf("%w (the broker refused warren's client certificate)", err)
	case strings.Contains(text, "tls: protocol version not supported"):
		return fmt.Errorf("%w (the broker does not offer TLS 1.2 or later, which warren requires)", err)
	case strings.Contains(text, "remote error: tls: "):
		return fmt.Errorf("%w (the broker refused the TLS handshake)", err)
	case strings.Contains(text, "tls: first record does not look like a TLS handshake"):
		return fmt.Errorf("%w (the broker does not speak TLS on this port: use amqp://, or its TLS port)", err)
	case strings.Contains(text, "frame size exceeds negotiated frame_max"), errors.Is(err, amqp.ErrFrame), errors.Is(err, amqp.ErrSyntax):
		return fmt.Errorf("%w (the server does not answer in AMQP: is this an AMQP port?)", err)
	case strings.Contains(text, "read tcp") && strings.Contains(text, "i/o timeout"):
		return fmt.Errorf("%w (no AMQP answer within %s: is this an AMQP port?)", err, handshakeTimeout)
	case errors.As(err, &aerr) && aerr.Code == amqp.AccessRefused:
		return fmt.Errorf("%w (check the user name and password)", err)
	}
	return err
}
