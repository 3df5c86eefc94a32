package handler

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/worker"
)

// httpErrorBodyBytes bounds how much of a failure's response body is kept
// for the log and the error.
const httpErrorBodyBytes = 1024

// HTTP is a handler that POSTs each message to a URL. A 2xx response acks;
// a status of DeadStatuses is dead; any other status, timeouts and
// connection failures retry, honouring Retry-After. Connection failures,
// timeouts, 5xx, 408 and 429 are marked Unavailable: they say the endpoint
// is down, and open the circuit breaker.
type HTTP struct {
	// DeadStatuses are the response statuses that mean the message itself
	// is bad: it goes to the dead-letter queue at once. Every other
	// status but 2xx retries. NewHTTP sets DefaultHTTPDeadStatuses.
	DeadStatuses []int
	// ReplyMaxBytes bounds the answer to a request with reply_to: the
	// body of a 2xx response. A longer one makes the message dead (the
	// request was handled; a truncated answer would be a wrong one). 0
	// means DefaultReplyMaxBytes.
	ReplyMaxBytes int64
	// ReplyHeaders are the response headers that a reply carries as AMQP
	// headers, named in lower case.
	ReplyHeaders []string
	// NoReply handles a request with reply_to like any message: the
	// response is not sent as an answer (WARREN_REPLY=false: the endpoint
	// answers, if it does).
	NoReply bool

	url    string
	client *http.Client
}

// DefaultHTTPDeadStatuses are the statuses that mean dead unless
// configured otherwise (WARREN_HTTP_DEAD_STATUSES): those that say the
// request itself is wrong, as CloudEvents and Knative delivery have it.
// 401, 403, 404, 409, 408, 429 and 5xx mean an endpoint that is
// deploying, scaling, or waiting for a renewed token: they retry.
var DefaultHTTPDeadStatuses = []int{
	http.StatusBadRequest,
	http.StatusGone,
	http.StatusRequestEntityTooLarge,
	http.StatusUnsupportedMediaType,
	http.StatusUnprocessableEntity,
}

// NewHTTP returns an HTTP handler posting to url, with one keep-alive
// connection pool sized for concurrency handlers.
func NewHTTP(url string, concurrency int) *HTTP {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = max(concurrency, 2)
	t.MaxIdleConnsPerHost = max(concurrency, 2)
	return &HTTP{
		DeadStatuses: slices.Clone(DefaultHTTPDeadStatuses),
		url:          url,
		client: &http.Client{
			Transport: t,
			// A redirect of a POST would silently turn into a GET.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Handle posts m. The request ends with ctx, which carries the handler
// timeout.
func (h *HTTP) Handle(ctx context.Context, m *worker.Message) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(m.Body))
	if err != nil {
		return worker.Permanent(fmt.Errorf("build request: %w", err))
	}
	if err := setRequestHeaders(req.Header, m); err != nil {
		// A message that claims to be a CloudEvent and is not a valid
		// one stays invalid, however often it is tried.
		return worker.Permanent(err)
	}
	tracing.InjectHTTP(ctx, req.Header) // traceparent, tracestate, baggage
	resp, err := h.client.Do(req)
	if err != nil {
		// Refused, reset, timed out: the endpoint is down, not the message bad.
		return worker.Unavailable(fmt.Errorf("post: %w", err))
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if m.ReplyTo != "" && !h.NoReply {
			return h.reply(resp, m)
		}
		// Read what is left so the connection is reused, within reason.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, httpErrorBodyBytes))
	err = fmt.Errorf("post: status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	if slices.Contains(h.DeadStatuses, resp.StatusCode) {
		return worker.Permanent(err)
	}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
		err = worker.Unavailable(err)
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		return worker.RetryAfter(err, d)
	}
	return err
}

// reply makes the 2xx response resp the answer to m: its body, its
// Content-Type, and the headers of ReplyHeaders.
func (h *HTTP) reply(resp *http.Response, m *worker.Message) error {
	limit := h.ReplyMaxBytes
	if limit <= 0 {
		limit = DefaultReplyMaxBytes
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read the response body: %w", err)
	}
	if int64(len(body)) > limit {
		return replyTooLarge(limit)
	}
	r := &worker.Reply{Body: body, ContentType: resp.Header.Get("Content-Type")}
	if err := h.replyHeaders(r, resp.Header, body); err != nil {
		return err
	}
	m.Reply = r
	return nil
}

// replyHeaders sets the content type and AMQP headers of the reply r from
// the response headers rh and body: the one place where response headers
// become reply headers. A response that is a CloudEvent keeps its
// attributes as cloudEvents: properties (CloudEventReplyOf); one that
// claims to be an event and is not a valid one makes the message dead,
// as it would be every time. Each header of ReplyHeaders present is one
// string, its values joined with ", " as HTTP allows, named in lower
// case.
func (h *HTTP) replyHeaders(r *worker.Reply, rh http.Header, body []byte) error {
	ce, ok, err := CloudEventReplyOf(rh, body)
	if err != nil {
		return worker.Permanent(fmt.Errorf("reply: %w", err))
	}
	if ok {
		r.ContentType, r.Headers = ce.ContentType, ce.Properties
	}
	for _, name := range h.ReplyHeaders {
		if vs := rh.Values(name); len(vs) > 0 {
			if r.Headers == nil {
				r.Headers = make(amqp.Table, len(h.ReplyHeaders))
			}
			r.Headers[strings.ToLower(name)] = strings.Join(vs, ", ")
		}
	}
	return nil
}

// setRequestHeaders sets the Content-Type and the headers that carry m's
// properties. A CloudEvent (cloudevents.go) has its attributes as ce-
// headers, or in its body, and not again as X-Warren-Header-*; it is an
// error when m claims to be one and is not a valid one.
func setRequestHeaders(h http.Header, m *worker.Message) error {
	if mode := cloudEventMode(m); mode != notEvent {
		rest, err := setCloudEventHeaders(h, m, mode)
		if err != nil {
			return err
		}
		setMessageHeaders(h, rest)
		return nil
	}
	ct := m.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", sanitizeHeaderValue(ct))
	setMessageHeaders(h, m)
	return nil
}

// setMessageHeaders maps the message's properties and AMQP headers to
// request headers: X-Warren-<Property> and X-Warren-Header-<Name>.
func setMessageHeaders(h http.Header, m *worker.Message) {
	set := func(k, v string) {
		if v != "" {
			h.Set(k, sanitizeHeaderValue(v))
		}
	}
	set("X-Warren-Message-Id", m.MessageID)
	set("X-Warren-Correlation-Id", m.CorrelationID)
	set("X-Warren-Exchange", m.Exchange)
	set("X-Warren-Routing-Key", m.RoutingKey)
	set("X-Warren-Content-Encoding", m.ContentEncoding)
	set("X-Warren-Type", m.Type)
	set("X-Warren-App-Id", m.AppID)
	set("X-Warren-Reply-To", m.ReplyTo)
	if !m.Timestamp.IsZero() {
		h.Set("X-Warren-Timestamp", m.Timestamp.UTC().Format(time.RFC3339))
	}
	h.Set("X-Warren-Redelivered", strconv.FormatBool(m.Redelivered))
	h.Set("X-Warren-Attempt", strconv.Itoa(m.Attempt))
	for k, v := range m.Headers {
		name := "X-Warren-Header-" + k
		if !validHeaderName(name) {
			continue
		}
		h.Set(name, sanitizeHeaderValue(headerString(v)))
	}
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

// sanitizeHeaderValue drops the bytes an HTTP header value cannot hold:
// the control characters but tab. net/http refuses to send a request with
// any of them, which would fail the message on every delivery. Other
// bytes, UTF-8 or not, pass as they are (HTTP allows them as obs-text).
func sanitizeHeaderValue(s string) string {
	clean := func(c byte) bool { return c >= ' ' && c != 0x7f || c == '\t' }
	i := 0
	for i < len(s) && clean(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s[:i])
	for ; i < len(s); i++ {
		if clean(s[i]) {
			b = append(b, s[i])
		}
	}
	return string(b)
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int(math.MaxInt64/time.Second) {
			// So long a wait does not fit a Duration; wait the longest.
			return math.MaxInt64, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
