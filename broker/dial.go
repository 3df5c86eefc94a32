// Package broker connects to RabbitMQ: it dials the nodes of a cluster in
// turn, declares warren's topology and publishes with publisher confirms.
package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultHeartbeat is the AMQP heartbeat interval when none is configured.
const DefaultHeartbeat = 10 * time.Second

// handshakeTimeout bounds the TCP, TLS and AMQP handshakes of one dial, so a
// node that accepts connections but never answers cannot hold warren.
const handshakeTimeout = 15 * time.Second

// Dialer opens connections to the first node of URLs that answers, starting
// from a random one so that replicas spread over a cluster, and moving on to
// the next node after a failure.
type Dialer struct {
	// URLs are the nodes of one cluster, amqp:// or amqps://.
	URLs []string
	// TLS configures amqps:// connections; nil means the system roots.
	TLS *tls.Config
	// Heartbeat is the AMQP heartbeat interval; 0 means DefaultHeartbeat.
	Heartbeat time.Duration
	// Name is shown as the connection name in the management UI and
	// rabbitmqctl list_connections (user_provided_name).
	Name string

	mu      sync.Mutex
	next    int  // index into URLs of the node to try first
	started bool // next has been chosen
}

// Dial connects to one node, trying each node at most once. The error names
// the nodes by their redacted URL, never with a password.
func (d *Dialer) Dial(ctx context.Context) (*amqp.Connection, string, error) {
	if len(d.URLs) == 0 {
		return nil, "", fmt.Errorf("dial: no broker URL")
	}
	d.mu.Lock()
	if !d.started {
		d.next = rand.IntN(len(d.URLs))
		d.started = true
	}
	start := d.next
	d.mu.Unlock()

	var errs []error
	for i := range d.URLs {
		idx := (start + i) % len(d.URLs)
		u := d.URLs[idx]
		conn, err := d.dialOne(ctx, u)
		if err == nil {
			d.mu.Lock()
			// Stay on this node for the next dial; a failure moves on.
			d.next = idx
			d.mu.Unlock()
			return conn, Redact(u), nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", Redact(u), err))
		if ctx.Err() != nil {
			break
		}
	}
	d.mu.Lock()
	d.next = (start + 1) % len(d.URLs)
	d.mu.Unlock()
	if len(errs) == 1 {
		return nil, "", fmt.Errorf("dial %w", errs[0])
	}
	return nil, "", fmt.Errorf("dial: every node failed: %w", joinErrors(errs))
}

func (d *Dialer) dialOne(ctx context.Context, rawURL string) (*amqp.Connection, error) {
	hb := d.Heartbeat
	if hb <= 0 {
		hb = DefaultHeartbeat
	}
	props := amqp.NewConnectionProperties()
	if d.Name != "" {
		props.SetClientConnectionName(d.Name)
	}
	cfg := amqp.Config{
		Heartbeat:       hb,
		Locale:          "en_US",
		Properties:      props,
		TLSClientConfig: d.TLS,
		Dial: func(network, addr string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			var nd net.Dialer
			c, err := nd.DialContext(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Cleared by amqp091-go once the AMQP handshake completes.
			if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	conn, err := amqp.DialConfig(rawURL, cfg)
	if err != nil {
		return nil, scrub(err, rawURL)
	}
	return conn, nil
}

// Redact returns the URL with its password replaced by "xxxxx". A URL that
// does not parse is replaced whole, since it may still hold a secret.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}

// scrub removes the password of rawURL from err's text, in case a library
// error ever quotes the URL.
func scrub(err error, rawURL string) error {
	u, perr := url.Parse(rawURL)
	if perr != nil {
		return &scrubbedError{err: err, secrets: []string{rawURL}}
	}
	if u.User == nil {
		return err
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" {
		return err
	}
	secrets := []string{pw}
	if raw := rawPassword(rawURL); raw != "" && raw != pw {
		secrets = append(secrets, raw)
	}
	return &scrubbedError{err: err, secrets: secrets}
}

// rawPassword returns the password as written in rawURL, percent-encoding
// and all.
func rawPassword(rawURL string) string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return ""
	}
	userinfo, _, ok := strings.Cut(rest, "@")
	if !ok {
		return ""
	}
	_, pw, _ := strings.Cut(userinfo, ":")
	return pw
}

// scrubbedError hides secrets in the text of the error it wraps.
type scrubbedError struct {
	err     error
	secrets []string
}

func (e *scrubbedError) Error() string {
	s := e.err.Error()
	for _, secret := range e.secrets {
		s = strings.ReplaceAll(s, secret, "xxxxx")
	}
	return s
}

func (e *scrubbedError) Unwrap() error { return e.err }

// joinErrors joins errs on one line, unlike errors.Join, so that a log
// line stays one line.
func joinErrors(errs []error) error {
	return &joinedError{errs: errs}
}

type joinedError struct{ errs []error }

func (e *joinedError) Error() string {
	parts := make([]string, len(e.errs))
	for i, err := range e.errs {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

func (e *joinedError) Unwrap() []error { return e.errs }
