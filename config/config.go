// Package config reads warren's configuration from WARREN_* environment
// variables and validates it before anything connects.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/kelseyhightower/envconfig"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
)

// Prefix starts the name of every variable warren reads.
const Prefix = "WARREN"

// Handler kinds.
const (
	HandlerLog  = "log"
	HandlerNoop = "noop"
	HandlerHTTP = "http"
	HandlerExec = "exec"
)

// Config is warren's whole configuration. Field tags name the variables;
// nested structs add their name to the prefix (AMQP.URL is WARREN_AMQP_URL).
type Config struct {
	AMQP struct {
		URL     string `default:"amqp://guest:guest@localhost:5672/" desc:"broker URL, amqp:// or amqps://; several, comma-separated, are the nodes of one cluster"`
		URLFile string `split_words:"true" desc:"file holding the broker URL (a mounted Secret); wins over WARREN_AMQP_URL"`
	}
	Queue        string   `desc:"queue to consume (required)"`
	QueueType    string   `split_words:"true" default:"classic" desc:"classic or quorum"`
	Declare      bool     `default:"true" desc:"declare the queue and exchange (true) or only check that they exist (false)"`
	Exchange     string   `desc:"exchange to bind the queue to; empty for none"`
	ExchangeType string   `split_words:"true" default:"direct" desc:"direct, fanout, topic or headers"`
	BindingKeys  []string `split_words:"true" desc:"routing keys of the bindings, comma-separated; default the queue name; headers exchange: name=value pairs, all must match"`
	Prefetch     int      `desc:"QoS prefetch count, fixed: most unacked messages held at once; unset: sized by warren from the completion rate and the broker's round trip, from WARREN_CONCURRENCY to WARREN_MAX_PREFETCH"`
	MaxPrefetch  int      `split_words:"true" default:"1000" desc:"largest prefetch warren sizes when WARREN_PREFETCH is unset: the memory bound"`
	// MaxInflightBytes is 0 when unset: the caller derives it from the
	// pod's memory limit (package memlimit).
	MaxInflightBytes Bytes           `split_words:"true" desc:"bytes of message bodies held at once (received, not settled), such as 256Mi (suffixes Ki, Mi, Gi); the adaptive prefetch shrinks to fit; unset: a quarter of the memory limit of warren's cgroup (the pod's), or 256Mi without one"`
	Concurrency      int             `default:"4" desc:"handlers running at once (at most WARREN_PREFETCH, or WARREN_MAX_PREFETCH)"`
	Handler          string          `default:"log" desc:"log, noop, http or exec"`
	HandlerTimeout   time.Duration   `split_words:"true" default:"1m" desc:"longest a handler may run for one message"`
	RetryDelays      []time.Duration `split_words:"true" default:"1s,10s,1m" desc:"waits before the 2nd, 3rd, ... attempt, comma-separated; the last repeats; empty: retry at the tail of the queue"`
	MaxRetryAfter    time.Duration   `split_words:"true" default:"1h" desc:"longest wait a handler may ask for (HTTP Retry-After); a message asking for more is dead-lettered"`
	MaxAttempts      int             `split_words:"true" default:"5" desc:"attempts before a message is dead-lettered to <queue>.dead"`
	DeliveryLimit    int             `split_words:"true" default:"0" desc:"quorum queues: deliveries before the broker dead-letters a message that is never settled (0: none)"`
	HTTP             struct {
		URL          string `desc:"http handler: the URL messages are POSTed to"`
		DeadStatuses []int  `split_words:"true" default:"400,410,413,415,422" desc:"http handler: response statuses that mean dead, not retry, comma-separated; every other failure retries"`
		// ReplyHeaders name the response headers that a reply carries.
		ReplyHeaders []string `split_words:"true" desc:"http handler: names of response headers a reply carries as AMQP headers (lower case), comma-separated; Content-Type is always its content type"`
	}
	Exec struct {
		Command       string `desc:"exec handler: command run per message, body on stdin; a program and its arguments (with trailing redirections to /dev/null or 2>&1) runs without a shell, anything else with /bin/sh -c"`
		DeadExitCodes []int  `split_words:"true" desc:"exec handler: exit codes that mean dead, not retry"`
		// Env names the variables of warren's environment passed on to the
		// command, beyond the few every program expects.
		Env []string `desc:"exec handler: names of more variables passed on to the command, comma-separated (it gets PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TMPDIR and the message's; never WARREN_*)"`
	}
	// Replies answers requests that carry reply_to; off, a command or
	// endpoint that answers them itself is not answered twice.
	Replies bool `envconfig:"REPLY" default:"true" desc:"true or false: answer a request that carries reply_to (the http handler's response, the exec command's standard output); false: the command or endpoint answers, if it does, as before warren sent replies"`
	// Replies to requests that carry reply_to.
	Reply struct {
		MaxBytes Bytes `split_words:"true" default:"1Mi" desc:"largest reply to a request with reply_to (the http handler's response body, the exec command's standard output); a larger one makes the request dead"`
		OnDead   bool  `split_words:"true" default:"false" desc:"a request with reply_to that goes dead gets an error reply: the reason in its body and in the x-warren-error header, x-warren-outcome: dead"`
	}
	// The circuit breaker (worker.CircuitConfig).
	Circuit                 string        `default:"on" desc:"on or off: the circuit breaker; on, failures that say the downstream is down (http handler: refused, reset, timed out, 5xx, 408, 429) stop consumption, the messages wait in the queue, no attempt spent, and one message probes until the downstream answers"`
	CircuitFailures         int           `split_words:"true" default:"5" desc:"failures in a row saying the downstream is down, within WARREN_CIRCUIT_WINDOW, that open the circuit"`
	CircuitWindow           time.Duration `split_words:"true" default:"30s" desc:"how recent those failures must be to count"`
	CircuitMaxProbeInterval time.Duration `split_words:"true" default:"1m" desc:"longest wait between probes while the circuit is open; they start 1s apart and double"`
	RateLimit               float64       `split_words:"true" default:"0" desc:"most handler calls this replica starts a second, for endpoints with quotas; evenly spaced (one every 1/limit s), retries included; fractions allowed (0.5: one every 2 s); 0: no limit"`
	ShutdownTimeout         time.Duration `split_words:"true" default:"25s" desc:"how long SIGTERM waits for in-flight messages; more than 0"`
	Heartbeat               time.Duration `default:"10s" desc:"AMQP heartbeat interval; detects a dead link"`
	ConnectionName          string        `split_words:"true" desc:"connection name shown by the broker; default the host name (the pod name)"`
	HealthAddr              string        `split_words:"true" default:":8080" desc:"listen address of /livez, /readyz and /metrics: host empty, an IP address or localhost, and a port"`
	Log                     struct {
		Level  string `default:"info" desc:"debug, info, warn or error"`
		Format string `default:"json" desc:"json or console"`
	}
	TLS struct {
		CAFile   string `split_words:"true" desc:"PEM file of the CA that signs the broker's certificate"`
		CertFile string `split_words:"true" desc:"PEM client certificate, for mutual TLS"`
		KeyFile  string `split_words:"true" desc:"PEM client key, for mutual TLS"`
	}

	// URLs are the broker URLs, from the file or the variable, split.
	URLs []string `ignored:"true"`
	// TLSConfig is the TLS client configuration built from the TLS files.
	TLSConfig *tls.Config `ignored:"true"`
	// Tracing is read from the standard OTEL_* variables, not WARREN_*
	// ones: the names every OpenTelemetry user and operator knows.
	Tracing tracing.Settings `ignored:"true"`
}

// Error is a configuration error: it names the variable, the value given
// (without any password) and what is expected.
type Error struct {
	Var   string
	Value string
	Unset bool
	// Problem, if set, says what is wrong with a value that is not shown,
	// such as a broker URL that does not parse and may hold a password
	// anywhere.
	Problem string
	Want    string
}

func (e *Error) Error() string {
	if e.Unset {
		return fmt.Sprintf("%s is not set: want %s", e.Var, e.Want)
	}
	if e.Problem != "" {
		return fmt.Sprintf("%s: %s; want %s", e.Var, e.Problem, e.Want)
	}
	return fmt.Sprintf("%s=%q: want %s", e.Var, e.Value, e.Want)
}

// wants says what each variable expects, for both parse and validation
// errors; what a bounded one expects comes from its Bound.
var wants = withBounds(map[string]string{
	"WARREN_AMQP_URL":           "amqp:// or amqps:// URLs, comma-separated, such as amqp://user:password@host:5672/vhost",
	"WARREN_AMQP_URL_FILE":      "a readable file holding the broker URL",
	"WARREN_QUEUE":              "the name of the queue to consume",
	"WARREN_QUEUE_TYPE":         "classic or quorum",
	"WARREN_DECLARE":            "true or false",
	"WARREN_EXCHANGE_TYPE":      "direct, fanout, topic or headers",
	"WARREN_BINDING_KEYS":       "name=value pairs for a headers exchange",
	"WARREN_HANDLER":            "one of log, noop, http, exec",
	"WARREN_HANDLER_TIMEOUT":    "a positive duration such as 30s or 5m",
	"WARREN_HTTP_URL":           "an http:// or https:// URL",
	"WARREN_EXEC_COMMAND":       "a shell command",
	"WARREN_EXEC_ENV":           "names of environment variables, comma-separated, none of them WARREN_* (warren's own settings and secrets)",
	"WARREN_CIRCUIT":            "on or off",
	"WARREN_REPLY":              "true or false",
	"WARREN_REPLY_ON_DEAD":      "true or false",
	"WARREN_HTTP_REPLY_HEADERS": "names of HTTP headers, comma-separated, such as X-Request-Id,ETag",
	"WARREN_SHUTDOWN_TIMEOUT":   "a positive duration such as 25s",
	"WARREN_HEALTH_ADDR":        "a listen address such as :8080 or 127.0.0.1:8080 (host empty, an IP address or localhost; port 0 to 65535)",
	"WARREN_LOG_LEVEL":          "one of debug, info, warn, error",
	"WARREN_LOG_FORMAT":         "json or console",
	"WARREN_TLS_CA_FILE":        "a readable PEM file of CA certificates",
	"WARREN_TLS_CERT_FILE":      "a readable PEM certificate, with WARREN_TLS_KEY_FILE",
	"WARREN_TLS_KEY_FILE":       "a readable PEM key, with WARREN_TLS_CERT_FILE",
})

func bad(name, value string) *Error {
	return &Error{Var: name, Value: value, Want: wants[name]}
}

// Load reads the environment into a Config and validates it. The error is
// an *Error naming the variable at fault.
func Load() (*Config, error) {
	var c Config
	if err := envconfig.Process(Prefix, &c); err != nil {
		var perr *envconfig.ParseError
		if errors.As(err, &perr) {
			return nil, bad(perr.KeyName, perr.Value)
		}
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	if _, set := os.LookupEnv("WARREN_PREFETCH"); set && c.Prefetch == 0 {
		// 0 is the adaptive prefetch of a Config; set, it is a mistake.
		return nil, bad("WARREN_PREFETCH", "0")
	}
	if _, set := os.LookupEnv("WARREN_MAX_INFLIGHT_BYTES"); set && c.MaxInflightBytes == 0 {
		// 0 is "derive it" in a Config; set, it is a mistake.
		return nil, bad("WARREN_MAX_INFLIGHT_BYTES", "0")
	}
	if _, set := os.LookupEnv("WARREN_CONCURRENCY"); !set {
		// The default must not contradict a small prefetch set alone.
		c.Concurrency = min(c.Concurrency, max(c.prefetchLimit(), 1))
	}
	if err := c.resolve(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	ts, err := tracing.FromEnv(os.LookupEnv)
	if err != nil {
		var terr *tracing.EnvError
		if errors.As(err, &terr) {
			return nil, &Error{Var: terr.Var, Value: terr.Value, Want: terr.Want}
		}
		return nil, err
	}
	c.Tracing = ts
	return &c, nil
}

// resolve reads the files the configuration points to.
func (c *Config) resolve() error {
	raw := c.AMQP.URL
	if c.AMQP.URLFile != "" {
		b, err := os.ReadFile(c.AMQP.URLFile)
		if err != nil {
			e := bad("WARREN_AMQP_URL_FILE", c.AMQP.URLFile)
			e.Want += fmt.Sprintf(" (%v)", errors.Unwrap(err))
			return e
		}
		raw = strings.TrimSpace(string(b))
	}
	// Lists are split on commas only; "a, b" means "a" and "b".
	for i, k := range c.BindingKeys {
		c.BindingKeys[i] = strings.TrimSpace(k)
	}
	for i, k := range c.Exec.Env {
		c.Exec.Env[i] = strings.TrimSpace(k)
	}
	for i, k := range c.HTTP.ReplyHeaders {
		c.HTTP.ReplyHeaders[i] = strings.TrimSpace(k)
	}
	c.URLs = broker.ParseURLs(raw)
	tlsConfig, err := c.loadTLS()
	if err != nil {
		return err
	}
	c.TLSConfig = tlsConfig
	return nil
}

// Validate checks every value and returns the first error found.
func (c *Config) Validate() error {
	urlVar := "WARREN_AMQP_URL"
	if c.AMQP.URLFile != "" {
		urlVar = "WARREN_AMQP_URL_FILE"
	}
	if len(c.URLs) == 0 {
		if c.AMQP.URLFile != "" {
			return &Error{Var: urlVar, Value: c.AMQP.URLFile, Want: wants[urlVar] + " (the file is empty)"}
		}
		return &Error{Var: urlVar, Unset: true, Want: wants["WARREN_AMQP_URL"]}
	}
	if err := broker.CheckURLs(c.URLs); err != nil {
		return &Error{Var: urlVar, Problem: err.Error(), Want: wants["WARREN_AMQP_URL"]}
	}
	var first amqp.URI
	for i, u := range c.URLs {
		uri, err := amqp.ParseURI(u)
		if err != nil {
			return &Error{Var: urlVar, Problem: "the URL does not parse", Want: wants["WARREN_AMQP_URL"]}
		}
		if i == 0 {
			first = uri
			continue
		}
		// The nodes of one cluster share its users and vhosts: a list
		// that mixes them is two brokers, or a typo, and failing over to
		// the odd node would consume elsewhere or be refused.
		if what := differs(first, uri); what != "" {
			return &Error{Var: urlVar, Value: broker.Redact(u),
				Want: "the nodes of one cluster: every URL with the user, password and vhost of the first (this one has another " + what + ")"}
		}
	}
	switch {
	case strings.TrimSpace(c.Queue) == "":
		return &Error{Var: "WARREN_QUEUE", Unset: true, Want: wants["WARREN_QUEUE"]}
	case len(c.Queue) > 255:
		return &Error{Var: "WARREN_QUEUE", Value: c.Queue, Want: "a queue name of at most 255 bytes"}
	case len(c.longestDerivedQueue()) > 255:
		// The broker refuses a longer name with 501 (shortstr) at every
		// declaration: warren would reconnect for ever.
		name := c.longestDerivedQueue()
		return &Error{Var: "WARREN_QUEUE", Value: c.Queue, Want: fmt.Sprintf(
			"a queue name short enough that the names warren derives from it fit 255 bytes (the longest, <queue>%s, would be %d bytes)",
			strings.TrimPrefix(name, c.Queue), len(name))}
	case !slices.Contains([]string{broker.Classic, broker.Quorum}, c.QueueType):
		return bad("WARREN_QUEUE_TYPE", c.QueueType)
	case c.Exchange != "" && !slices.Contains([]string{amqp.ExchangeDirect, amqp.ExchangeFanout, amqp.ExchangeTopic, amqp.ExchangeHeaders}, c.ExchangeType):
		return bad("WARREN_EXCHANGE_TYPE", c.ExchangeType)
	case c.Prefetch != 0 && !within("WARREN_PREFETCH", c.Prefetch): // 0: adaptive
		return bad("WARREN_PREFETCH", strconv.Itoa(c.Prefetch))
	case !within("WARREN_MAX_PREFETCH", c.MaxPrefetch):
		return bad("WARREN_MAX_PREFETCH", strconv.Itoa(c.MaxPrefetch))
	case c.MaxInflightBytes != 0 && !within("WARREN_MAX_INFLIGHT_BYTES", c.MaxInflightBytes): // 0: derived
		return bad("WARREN_MAX_INFLIGHT_BYTES", c.MaxInflightBytes.String())
	case !within("WARREN_CONCURRENCY", c.Concurrency) || c.Concurrency > c.prefetchLimit():
		e := bad("WARREN_CONCURRENCY", strconv.Itoa(c.Concurrency))
		limit := "WARREN_PREFETCH"
		if c.Prefetch == 0 {
			limit = "WARREN_MAX_PREFETCH"
		}
		e.Want = fmt.Sprintf("an integer from %d to %s (%d)", boundOf("WARREN_CONCURRENCY").Min, limit, c.prefetchLimit())
		return e
	case c.HandlerTimeout <= 0:
		return bad("WARREN_HANDLER_TIMEOUT", c.HandlerTimeout.String())
	case !within("WARREN_MAX_RETRY_AFTER", c.MaxRetryAfter):
		return bad("WARREN_MAX_RETRY_AFTER", c.MaxRetryAfter.String())
	case !within("WARREN_MAX_ATTEMPTS", c.MaxAttempts):
		return bad("WARREN_MAX_ATTEMPTS", strconv.Itoa(c.MaxAttempts))
	case !within("WARREN_DELIVERY_LIMIT", c.DeliveryLimit) || (c.DeliveryLimit > 0 && c.QueueType != broker.Quorum):
		return bad("WARREN_DELIVERY_LIMIT", strconv.Itoa(c.DeliveryLimit))
	case c.Reply.OnDead && !c.Replies:
		return &Error{Var: "WARREN_REPLY_ON_DEAD", Value: "true", Want: "false while WARREN_REPLY=false: warren sends no replies, error replies included"}
	case !within("WARREN_REPLY_MAX_BYTES", c.Reply.MaxBytes):
		return bad("WARREN_REPLY_MAX_BYTES", c.Reply.MaxBytes.String())
	case c.Circuit != "on" && c.Circuit != "off":
		return bad("WARREN_CIRCUIT", c.Circuit)
	case !within("WARREN_CIRCUIT_FAILURES", c.CircuitFailures):
		return bad("WARREN_CIRCUIT_FAILURES", strconv.Itoa(c.CircuitFailures))
	case !within("WARREN_CIRCUIT_WINDOW", c.CircuitWindow):
		return bad("WARREN_CIRCUIT_WINDOW", c.CircuitWindow.String())
	case !within("WARREN_CIRCUIT_MAX_PROBE_INTERVAL", c.CircuitMaxProbeInterval):
		return bad("WARREN_CIRCUIT_MAX_PROBE_INTERVAL", c.CircuitMaxProbeInterval.String())
	case !within("WARREN_RATE_LIMIT", c.RateLimit):
		return bad("WARREN_RATE_LIMIT", strconv.FormatFloat(c.RateLimit, 'g', -1, 64))
	case c.ShutdownTimeout <= 0:
		// The worker takes 0 for its default, 25s: "0s" would mean the
		// opposite of what it says.
		return bad("WARREN_SHUTDOWN_TIMEOUT", c.ShutdownTimeout.String())
	case !within("WARREN_HEARTBEAT", c.Heartbeat):
		return bad("WARREN_HEARTBEAT", c.Heartbeat.String())
	case !validAddr(c.HealthAddr):
		return bad("WARREN_HEALTH_ADDR", c.HealthAddr)
	case !slices.Contains([]string{"json", "console"}, c.Log.Format):
		return bad("WARREN_LOG_FORMAT", c.Log.Format)
	}
	if c.Exchange != "" && c.ExchangeType == amqp.ExchangeHeaders {
		for _, kv := range c.BindingKeys {
			if name, _, ok := strings.Cut(kv, "="); !ok || name == "" {
				return bad("WARREN_BINDING_KEYS", strings.Join(c.BindingKeys, ","))
			}
		}
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		return bad("WARREN_LOG_LEVEL", c.Log.Level)
	}
	for _, d := range c.RetryDelays {
		if !within("WARREN_RETRY_DELAYS", d) {
			return bad("WARREN_RETRY_DELAYS", joinDurations(c.RetryDelays))
		}
	}
	for _, status := range c.HTTP.DeadStatuses {
		if !within("WARREN_HTTP_DEAD_STATUSES", status) {
			return bad("WARREN_HTTP_DEAD_STATUSES", joinInts(c.HTTP.DeadStatuses))
		}
	}
	for _, code := range c.Exec.DeadExitCodes {
		if !within("WARREN_EXEC_DEAD_EXIT_CODES", code) {
			return bad("WARREN_EXEC_DEAD_EXIT_CODES", joinInts(c.Exec.DeadExitCodes))
		}
	}
	for _, name := range c.HTTP.ReplyHeaders {
		if !headerName(name) {
			return bad("WARREN_HTTP_REPLY_HEADERS", strings.Join(c.HTTP.ReplyHeaders, ","))
		}
	}
	for _, name := range c.Exec.Env {
		if !envName(name) || strings.HasPrefix(name, Prefix+"_") {
			return bad("WARREN_EXEC_ENV", strings.Join(c.Exec.Env, ","))
		}
	}
	switch c.Handler {
	case HandlerLog, HandlerNoop:
	case HandlerHTTP:
		if c.HTTP.URL == "" {
			return &Error{Var: "WARREN_HTTP_URL", Unset: true, Want: wants["WARREN_HTTP_URL"] + " (WARREN_HANDLER=http)"}
		}
		if !strings.HasPrefix(c.HTTP.URL, "http://") && !strings.HasPrefix(c.HTTP.URL, "https://") {
			return &Error{Var: "WARREN_HTTP_URL", Value: broker.Redact(c.HTTP.URL), Want: wants["WARREN_HTTP_URL"]}
		}
	case HandlerExec:
		if strings.TrimSpace(c.Exec.Command) == "" {
			return &Error{Var: "WARREN_EXEC_COMMAND", Unset: true, Want: wants["WARREN_EXEC_COMMAND"] + " (WARREN_HANDLER=exec)"}
		}
	default:
		return bad("WARREN_HANDLER", c.Handler)
	}
	return nil
}

// prefetchLimit returns the largest prefetch warren may use: the one
// set, or the adaptive one's bound (Prefetch 0).
func (c *Config) prefetchLimit() int {
	if c.Prefetch == 0 {
		return c.MaxPrefetch
	}
	return c.Prefetch
}

// differs names what of user, password and vhost b has that a has not,
// or returns "" when they agree. It never says what the password is.
func differs(a, b amqp.URI) string {
	switch {
	case a.Username != b.Username:
		return "user"
	case a.Password != b.Password:
		return "password"
	case a.Vhost != b.Vhost:
		return "vhost"
	}
	return ""
}

// longestDerivedQueue returns the longest of the names of the queues
// warren declares beside the queue: its retry and dead-letter queues.
func (c *Config) longestDerivedQueue() string {
	topo := c.Topology()
	longest := topo.DeadQueue()
	for _, d := range c.RetryDelays {
		if name := topo.RetryQueue(d); len(name) > len(longest) {
			longest = name
		}
	}
	return longest
}

// envName reports whether s can name an environment variable that a
// shell sees: a letter or underscore, then letters, digits, underscores.
func envName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// headerName reports whether s is an HTTP header name (a token).
func headerName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// validAddr reports whether the health server can listen on addr: a host
// that is empty (every address), an IP address or localhost, and a port
// number. Other names are refused: resolving one at start makes warren
// depend on DNS, and a name that does not resolve fails only at listen.
func validAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535 && port[0] != '+' && port[0] != '-'
}

// loadTLS builds the TLS client configuration: certificate verification
// on, TLS 1.2 at least, the CA and client certificate from the files.
func (c *Config) loadTLS() (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLS.CAFile != "" {
		pool, err := broker.LoadCA(c.TLS.CAFile)
		if err != nil {
			return nil, bad("WARREN_TLS_CA_FILE", c.TLS.CAFile)
		}
		t.RootCAs = pool
	}
	switch {
	case c.TLS.CertFile == "" && c.TLS.KeyFile == "":
	case c.TLS.CertFile == "":
		return nil, &Error{Var: "WARREN_TLS_CERT_FILE", Unset: true, Want: wants["WARREN_TLS_CERT_FILE"]}
	case c.TLS.KeyFile == "":
		return nil, &Error{Var: "WARREN_TLS_KEY_FILE", Unset: true, Want: wants["WARREN_TLS_KEY_FILE"]}
	default:
		cert, err := broker.LoadKeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			return nil, bad("WARREN_TLS_CERT_FILE", c.TLS.CertFile)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// TLSFiles returns the TLS files to read again on every connection, or nil
// when none is set (the system roots, no client certificate).
func (c *Config) TLSFiles() *broker.TLSFiles {
	if c.TLS.CAFile == "" && c.TLS.CertFile == "" && c.TLS.KeyFile == "" {
		return nil
	}
	return &broker.TLSFiles{CA: c.TLS.CAFile, Cert: c.TLS.CertFile, Key: c.TLS.KeyFile}
}

// Topology returns the queue and bindings the configuration names.
func (c *Config) Topology() broker.Topology {
	return broker.Topology{
		Queue:         c.Queue,
		QueueType:     c.QueueType,
		Declare:       c.Declare,
		Exchange:      c.Exchange,
		ExchangeType:  c.ExchangeType,
		BindingKeys:   c.BindingKeys,
		RetryDelays:   c.RetryDelays,
		DeliveryLimit: c.DeliveryLimit,
	}
}

// CircuitThreshold returns the failures that open the circuit breaker, or
// 0 when WARREN_CIRCUIT is off.
func (c *Config) CircuitThreshold() int {
	if c.Circuit == "off" {
		return 0
	}
	return c.CircuitFailures
}

// Unknown returns the WARREN_* variables in environ that warren does not
// read, most likely misspelt. Kubernetes' service links (WARREN_PORT,
// WARREN_SERVICE_HOST, ...) are left out.
func Unknown(environ []string) []string {
	known := make(map[string]bool)
	for _, k := range keys() {
		known[k] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, Prefix+"_") || known[name] || serviceLink(name) {
			continue
		}
		unknown = append(unknown, name)
	}
	slices.Sort(unknown)
	return unknown
}

func serviceLink(name string) bool {
	return strings.HasSuffix(name, "_SERVICE_HOST") || strings.HasSuffix(name, "_SERVICE_PORT") ||
		strings.Contains(name, "_SERVICE_PORT_") || strings.HasSuffix(name, "_PORT") || strings.Contains(name, "_PORT_")
}

// keys returns the names of all variables warren reads.
func keys() []string {
	var b strings.Builder
	if err := envconfig.Usagef(Prefix, &Config{}, &b, "{{range .}}{{usage_key .}}\n{{end}}"); err != nil {
		return nil
	}
	return strings.Fields(b.String())
}

// Usage writes the table of variables, their defaults and meaning; the
// meaning of a bounded variable ends with its range.
func Usage(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 1, 0, 2, ' ', 0)
	const format = "VARIABLE\tDEFAULT\tMEANING\n{{range .}}{{.Key}}\t{{.Tags.Get \"default\"}}\t{{.Tags.Get \"desc\"}}{{usage_range .Key}}\n{{end}}"
	tmpl, err := template.New("usage").Funcs(template.FuncMap{"usage_range": usageRange}).Parse(format)
	if err != nil {
		return fmt.Errorf("print usage: %w", err)
	}
	if err := envconfig.Usaget(Prefix, &Config{}, tw, tmpl); err != nil {
		return fmt.Errorf("print usage: %w", err)
	}
	// Tracing: the standard OpenTelemetry variables.
	for _, v := range tracing.Variables {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, v.Default, v.Meaning)
	}
	return tw.Flush()
}

// usageRange returns what warren help adds to the meaning of the
// variable name: its range, if it has one.
func usageRange(name string) string {
	for _, b := range bounds {
		switch {
		case b.Var != name:
		case b.List:
			return "; each " + b.Range()
		default:
			return "; " + b.Range()
		}
	}
	return ""
}

func joinInts(ns []int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

func joinDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return strings.Join(parts, ",")
}
