// Package broker connects to RabbitMQ: it dials the nodes of a cluster in
// turn, declares warren's topology and publishes with publisher confirms.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
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
	// URLFile, if set, names a file holding the URLs, comma-separated (a
	// mounted Secret). It wins over URLs and is read again on every Dial,
	// so that a rotated password takes effect at the next reconnect,
	// without a restart.
	URLFile string
	// TLS configures amqps:// connections; nil means the system roots. It
	// is cloned for each connection, and its ServerName, if empty, set
	// from the host of the URL dialled.
	TLS *tls.Config
	// TLSFiles, if set, wins over TLS: the files are read again on every
	// Dial, so that a renewed certificate takes effect at the next
	// reconnect.
	TLSFiles *TLSFiles
	// Heartbeat is the AMQP heartbeat interval; 0 means DefaultHeartbeat.
	Heartbeat time.Duration
	// Name is shown as the connection name in the management UI and
	// rabbitmqctl list_connections (user_provided_name).
	Name string

	mu      sync.Mutex
	next    int    // index into URLs of the node to try first
	started bool   // next has been chosen
	step    string // what Dial waits for, "" outside Dial
}

// Step says what a running Dial waits for ("connecting to host:port",
// "handshake with host:port"), or "" when none runs: the reason to show
// while not ready.
func (d *Dialer) Step() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.step
}

func (d *Dialer) setStep(step string) {
	d.mu.Lock()
	d.step = step
	d.mu.Unlock()
}

// Dial connects to one node, trying each node at most once. The error names
// the nodes by their redacted URL, never with a password.
func (d *Dialer) Dial(ctx context.Context) (*amqp.Connection, string, error) {
	defer d.setStep("")
	urls := d.URLs
	if d.URLFile != "" {
		b, err := os.ReadFile(d.URLFile)
		if err != nil {
			return nil, "", fmt.Errorf("dial: read the URL file: %w", err)
		}
		urls = ParseURLs(string(b))
	}
	if len(urls) == 0 {
		return nil, "", fmt.Errorf("dial: no broker URL")
	}
	// Checked before any is dialled: a password holding a comma splits
	// into pieces that may each look like a URL, whose host and port the
	// errors of a dial would show.
	if err := CheckURLs(urls); err != nil {
		if d.URLFile != "" {
			return nil, "", fmt.Errorf("dial: WARREN_AMQP_URL_FILE: %w", err)
		}
		return nil, "", fmt.Errorf("dial: %w", err)
	}
	var tlsConfig *tls.Config
	if d.TLSFiles != nil {
		c, err := d.TLSFiles.Load()
		if err != nil {
			return nil, "", fmt.Errorf("dial: %w", err)
		}
		tlsConfig = c
	} else if d.TLS != nil {
		tlsConfig = d.TLS
	}
	d.mu.Lock()
	if !d.started {
		d.next = rand.IntN(len(urls))
		d.started = true
	}
	// The list may have changed since the last dial.
	start := d.next % len(urls)
	d.mu.Unlock()

	var errs []error
	for i := range urls {
		idx := (start + i) % len(urls)
		u := urls[idx]
		conn, err := d.dialOne(ctx, u, tlsConfig)
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
	d.next = (start + 1) % len(urls)
	d.mu.Unlock()
	if len(errs) == 1 {
		return nil, "", fmt.Errorf("dial %w", errs[0])
	}
	return nil, "", fmt.Errorf("dial: every node failed: %w", joinErrors(errs))
}

func (d *Dialer) dialOne(ctx context.Context, rawURL string, tlsConfig *tls.Config) (*amqp.Connection, error) {
	if tlsConfig != nil {
		// amqp091-go writes the URL's host into an empty ServerName of the
		// configuration it is given: on a shared one, the first node's
		// name would then be checked against every other node's
		// certificate.
		tlsConfig = tlsConfig.Clone()
		if uri, err := amqp.ParseURI(rawURL); err == nil && tlsConfig.ServerName == "" {
			tlsConfig.ServerName = uri.Host
		}
	}
	hb := d.Heartbeat
	if hb <= 0 {
		hb = DefaultHeartbeat
	}
	props := amqp.NewConnectionProperties()
	if name := d.Name + nameSuffix(ctx); d.Name != "" {
		props.SetClientConnectionName(name)
	}
	// amqp091-go's handshakes take no context: closing the connection
	// when ctx ends is what stops them (a SIGTERM while a node accepts
	// and never answers), until the handshakes are over.
	var (
		mu       sync.Mutex
		unwatch  func() bool
		watching bool
	)
	cfg := amqp.Config{
		Heartbeat:       hb,
		Locale:          "en_US",
		Properties:      props,
		TLSClientConfig: tlsConfig,
		Dial: func(network, addr string) (net.Conn, error) {
			d.setStep("connecting to " + addr)
			dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			var nd net.Dialer
			c, err := nd.DialContext(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			d.setStep("handshake with " + addr)
			mu.Lock()
			unwatch, watching = context.AfterFunc(ctx, func() { c.Close() }), true
			mu.Unlock()
			// Cleared by amqp091-go once the AMQP handshake completes.
			if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	conn, err := amqp.DialConfig(rawURL, cfg)
	mu.Lock()
	if watching && !unwatch() {
		// ctx ended during the handshakes, and the connection with it.
		mu.Unlock()
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("handshake: %w", context.Cause(ctx))
	}
	mu.Unlock()
	if err != nil {
		if tlsConfig != nil && strings.HasPrefix(rawURL, "amqps://") && causeless(err) {
			if why := probeTLS(ctx, rawURL, tlsConfig); why != nil {
				err = fmt.Errorf("%w, after the broker ended the TLS session: %w", err, why)
			}
		}
		return nil, scrub(explainDial(err), rawURL)
	}
	return conn, nil
}

// CheckURL reports why rawURL is not a broker URL warren can use, or nil.
// The error says what is wrong (the scheme, the port) and never quotes any
// of rawURL: a URL that does not parse may be a piece of a password, or
// hold one where a host or a path would be.
func CheckURL(rawURL string) error {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return errors.New("no scheme")
	}
	if s := strings.ToLower(scheme); s != "amqp" && s != "amqps" {
		return errors.New("the scheme is not amqp:// or amqps://")
	}
	// The user information ends at the last @ before the first /, ? or
	// #. An @ after them means a /, ? or # in the password: the parser
	// would take a piece of it for the host, the port or the vhost, which
	// are shown.
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		if strings.Contains(rest[i:], "@") {
			return errors.New("an @ after the host (percent-encode /, ? and # in the user and password)")
		}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return errors.New(parseProblem(err))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return errors.New("port out of range 1-65535")
		}
	}
	if _, err := amqp.ParseURI(rawURL); err != nil {
		return errors.New("not an AMQP URI")
	}
	return nil
}

// parseProblem names what net/url found wrong in a URL, from the type and
// text of its error, without the URL the error quotes.
func parseProblem(err error) string {
	var escape url.EscapeError
	var host url.InvalidHostError
	text := err.Error()
	switch {
	case errors.As(err, &escape):
		return "bad percent-encoding (a % not followed by two hex digits)"
	case errors.As(err, &host):
		return "bad host"
	case strings.Contains(text, "invalid control character"):
		return "a control character (a tab, a newline)"
	case strings.Contains(text, "invalid userinfo"):
		return "the user or password holds a character that must be percent-encoded"
	case strings.Contains(text, "invalid port"):
		return "bad port"
	}
	return "not a URL"
}

// CheckURLs checks each of urls with CheckURL. The error names the URL by
// its position in the list, never by its text.
func CheckURLs(urls []string) error {
	for i, u := range urls {
		if err := CheckURL(u); err != nil {
			if len(urls) == 1 {
				return fmt.Errorf("the URL does not parse: %w", err)
			}
			return fmt.Errorf("URL %d of %d does not parse: %w", i+1, len(urls), err)
		}
	}
	return nil
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
