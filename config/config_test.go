package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/tracing"
	"github.com/warren-mq/warren/worker"
)

// unsetenv removes name from the environment until the test ends. Unlike
// t.Setenv(name, ""), the variable is absent: envconfig applies defaults
// only to absent variables.
func unsetenv(t testing.TB, name string) {
	t.Helper()
	old, ok := os.LookupEnv(name)
	if err := os.Unsetenv(name); err != nil {
		t.Fatalf("unset %s: %v", name, err)
	}
	if ok {
		t.Cleanup(func() { os.Setenv(name, old) })
	}
}

// clearEnv removes every WARREN_* and OTEL_* variable until the test ends.
func clearEnv(t testing.TB) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, Prefix+"_") || strings.HasPrefix(name, "OTEL_") {
			unsetenv(t, name)
		}
	}
}

// setEnv starts the test from an environment that holds exactly the
// WARREN_* variables of env.
func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned returns a self-signed CA certificate and its key, PEM-encoded.
func selfSigned(t *testing.T) (cert *x509.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "warren test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func TestLoadDefaults(t *testing.T) {
	setEnv(t, map[string]string{"WARREN_QUEUE": "q"})
	c, err := Load()
	if err != nil {
		t.Fatalf("Load() = %v, want nil", err)
	}
	for _, tt := range []struct {
		name string
		give any
		want any
	}{
		{"Queue", c.Queue, "q"},
		{"Prefetch", c.Prefetch, 0}, // adaptive
		{"MaxPrefetch", c.MaxPrefetch, worker.DefaultMaxPrefetch},
		{"Concurrency", c.Concurrency, 4},
		{"Handler", c.Handler, HandlerLog},
		{"HandlerTimeout", c.HandlerTimeout, time.Minute},
		{"ShutdownTimeout", c.ShutdownTimeout, 25 * time.Second},
		// handler.TestNewHTTP checks that the library's default is the same.
		{"HTTP.DeadStatuses", fmt.Sprint(c.HTTP.DeadStatuses), "[400 410 413 415 422]"},
		{"MaxRetryAfter", c.MaxRetryAfter, worker.DefaultMaxRetryAfter},
		{"Heartbeat", c.Heartbeat, 10 * time.Second},
		// On by default, with the worker's defaults.
		{"CircuitThreshold()", c.CircuitThreshold(), worker.DefaultCircuitFailures},
		{"CircuitWindow", c.CircuitWindow, worker.DefaultCircuitWindow},
		{"CircuitMaxProbeInterval", c.CircuitMaxProbeInterval, worker.DefaultCircuitMaxProbeInterval},
		{"Reply.MaxBytes", c.Reply.MaxBytes, Bytes(1 << 20)},
		{"Reply.OnDead", c.Reply.OnDead, false},
		{"Replies", c.Replies, true},
		{"HTTP.ReplyHeaders", len(c.HTTP.ReplyHeaders), 0},
		{"HealthAddr", c.HealthAddr, ":8080"},
		{"QueueType", c.QueueType, "classic"},
		{"Declare", c.Declare, true},
		{"Exchange", c.Exchange, ""},
		{"ExchangeType", c.ExchangeType, "direct"},
		{"Log.Format", c.Log.Format, "json"},
		{"Log.Level", c.Log.Level, "info"},
		{"TLSConfig.MinVersion", c.TLSConfig.MinVersion, uint16(tls.VersionTLS12)},
		{"TLSConfig.InsecureSkipVerify", c.TLSConfig.InsecureSkipVerify, false},
	} {
		if tt.give != tt.want {
			t.Errorf("Load().%s = %v, want %v", tt.name, tt.give, tt.want)
		}
	}
	if want := []string{"amqp://guest:guest@localhost:5672/"}; !slices.Equal(c.URLs, want) {
		t.Errorf("Load().URLs = %q, want %q", c.URLs, want)
	}
	if c.TLSConfig.RootCAs != nil || len(c.TLSConfig.Certificates) != 0 {
		t.Errorf("Load().TLSConfig = %+v, want no CA and no client certificate without the TLS files", c.TLSConfig)
	}
	if f := c.TLSFiles(); f != nil {
		t.Errorf("Load().TLSFiles() = %+v, want nil without the TLS files", f)
	}
	if len(c.Exec.Env) != 0 {
		t.Errorf("Load().Exec.Env = %q, want nothing passed on by default", c.Exec.Env)
	}
	if topo := c.Topology(); topo.Queue != "q" || !topo.Declare || topo.QueueType != "classic" {
		t.Errorf("Topology() = %+v, want queue q, classic, declared", topo)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	urlFile := write("url", "amqp://u:p@h:5672/v\n")
	caCert, caPEM, keyPEM := selfSigned(t)
	caFile := write("ca.pem", string(caPEM))
	keyFile := write("key.pem", string(keyPEM))

	for _, tt := range []struct {
		name  string
		give  map[string]string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "url file wins and is trimmed",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_AMQP_URL": "amqp://other/", "WARREN_AMQP_URL_FILE": urlFile},
			check: func(t *testing.T, c *Config) {
				if want := []string{"amqp://u:p@h:5672/v"}; !slices.Equal(c.URLs, want) {
					t.Errorf("URLs = %q, want %q", c.URLs, want)
				}
			},
		},
		{
			name: "circuit off",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_CIRCUIT": "off", "WARREN_CIRCUIT_FAILURES": "20"},
			check: func(t *testing.T, c *Config) {
				if got := c.CircuitThreshold(); got != 0 {
					t.Errorf("CircuitThreshold() = %d, want 0 (off)", got)
				}
			},
		},
		{
			name: "circuit settings",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_CIRCUIT_FAILURES": "20", "WARREN_CIRCUIT_WINDOW": "2m", "WARREN_CIRCUIT_MAX_PROBE_INTERVAL": "10s"},
			check: func(t *testing.T, c *Config) {
				if c.CircuitThreshold() != 20 || c.CircuitWindow != 2*time.Minute || c.CircuitMaxProbeInterval != 10*time.Second {
					t.Errorf("circuit = %d, %s, %s, want 20, 2m, 10s", c.CircuitThreshold(), c.CircuitWindow, c.CircuitMaxProbeInterval)
				}
			},
		},
		{
			name: "rate limit a fraction",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_RATE_LIMIT": "0.5"},
			check: func(t *testing.T, c *Config) {
				if c.RateLimit != 0.5 {
					t.Errorf("RateLimit = %v, want 0.5", c.RateLimit)
				}
			},
		},
		{
			name: "comma-separated urls",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_AMQP_URL": " amqp://a:5672/ , amqps://b/ ,,amqp://c/"},
			check: func(t *testing.T, c *Config) {
				if want := []string{"amqp://a:5672/", "amqps://b/", "amqp://c/"}; !slices.Equal(c.URLs, want) {
					t.Errorf("URLs = %q, want %q", c.URLs, want)
				}
			},
		},
		{
			// The nodes of a cluster: one user, password and vhost, any
			// hosts and ports; amqp://h and amqp://h:5672/ are the same
			// user (guest) and vhost (/).
			name: "urls of one cluster",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_AMQP_URL": "amqp://u:p@n0:5672/v,amqp://u:p@n1:5673/v,amqp://u:p@n2/v"},
			check: func(t *testing.T, c *Config) {
				if len(c.URLs) != 3 {
					t.Errorf("URLs = %q, want 3", c.URLs)
				}
			},
		},
		{
			name: "http handler",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HANDLER": "http", "WARREN_HTTP_URL": "https://svc/hook"},
			check: func(t *testing.T, c *Config) {
				if c.Handler != HandlerHTTP || c.HTTP.URL != "https://svc/hook" {
					t.Errorf("Handler, HTTP.URL = %q, %q, want http, https://svc/hook", c.Handler, c.HTTP.URL)
				}
			},
		},
		{
			name: "http dead statuses",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HANDLER": "http", "WARREN_HTTP_URL": "https://svc/hook", "WARREN_HTTP_DEAD_STATUSES": "400,599"},
			check: func(t *testing.T, c *Config) {
				if want := []int{400, 599}; !slices.Equal(c.HTTP.DeadStatuses, want) {
					t.Errorf("HTTP.DeadStatuses = %v, want %v", c.HTTP.DeadStatuses, want)
				}
			},
		},
		{
			name: "no http dead statuses",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HTTP_DEAD_STATUSES": ""},
			check: func(t *testing.T, c *Config) {
				if len(c.HTTP.DeadStatuses) != 0 {
					t.Errorf("HTTP.DeadStatuses = %v, want none", c.HTTP.DeadStatuses)
				}
			},
		},
		{
			// 255 bytes with its longest derived name, Q.retry.1ms.
			name: "longest queue name",
			give: map[string]string{"WARREN_QUEUE": strings.Repeat("q", 255-len(".retry.1ms")), "WARREN_RETRY_DELAYS": "1ms,1s"},
			check: func(t *testing.T, c *Config) {
				if len(c.Queue) != 245 {
					t.Errorf("Queue has %d bytes, want 245", len(c.Queue))
				}
			},
		},
		{
			name: "health addresses that listen",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HEALTH_ADDR": "[::1]:0"},
			check: func(t *testing.T, c *Config) {
				if c.HealthAddr != "[::1]:0" {
					t.Errorf("HealthAddr = %q, want [::1]:0", c.HealthAddr)
				}
			},
		},
		{
			name: "health address localhost",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HEALTH_ADDR": "localhost:65535"},
			check: func(t *testing.T, c *Config) {
				if c.HealthAddr != "localhost:65535" {
					t.Errorf("HealthAddr = %q, want localhost:65535", c.HealthAddr)
				}
			},
		},
		{
			name: "exec handler",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HANDLER": "exec", "WARREN_EXEC_COMMAND": "./run", "WARREN_EXEC_DEAD_EXIT_CODES": "3,75"},
			check: func(t *testing.T, c *Config) {
				if c.Exec.Command != "./run" || !slices.Equal(c.Exec.DeadExitCodes, []int{3, 75}) {
					t.Errorf("Exec = %+v, want ./run with dead codes [3 75]", c.Exec)
				}
			},
		},
		{
			name: "exec environment passed on",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_HANDLER": "exec", "WARREN_EXEC_COMMAND": "./run", "WARREN_EXEC_ENV": "API_TOKEN, _x,PYTHONPATH"},
			check: func(t *testing.T, c *Config) {
				if want := []string{"API_TOKEN", "_x", "PYTHONPATH"}; !slices.Equal(c.Exec.Env, want) {
					t.Errorf("Exec.Env = %q, want %q", c.Exec.Env, want)
				}
			},
		},
		{
			name: "tls files kept to be read again",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_TLS_CA_FILE": caFile, "WARREN_TLS_CERT_FILE": caFile, "WARREN_TLS_KEY_FILE": keyFile},
			check: func(t *testing.T, c *Config) {
				want := broker.TLSFiles{CA: caFile, Cert: caFile, Key: keyFile}
				if got := c.TLSFiles(); got == nil || *got != want {
					t.Errorf("TLSFiles() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "max inflight bytes with a suffix",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_MAX_INFLIGHT_BYTES": "64Mi"},
			check: func(t *testing.T, c *Config) {
				if c.MaxInflightBytes != 64<<20 {
					t.Errorf("Load() max inflight bytes = %d, want %d", c.MaxInflightBytes, 64<<20)
				}
			},
		},
		{
			name: "max inflight bytes unset: 0, for the caller to derive",
			give: map[string]string{"WARREN_QUEUE": "q"},
			check: func(t *testing.T, c *Config) {
				if c.MaxInflightBytes != 0 {
					t.Errorf("Load() max inflight bytes = %d, want 0", c.MaxInflightBytes)
				}
			},
		},
		{
			name: "a small max prefetch alone lowers the default concurrency",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_MAX_PREFETCH": "2"},
			check: func(t *testing.T, c *Config) {
				if c.Prefetch != 0 || c.MaxPrefetch != 2 || c.Concurrency != 2 {
					t.Errorf("Load() = prefetch %d, max prefetch %d, concurrency %d; want 0 (adaptive), 2, 2", c.Prefetch, c.MaxPrefetch, c.Concurrency)
				}
			},
		},
		{
			name: "everything set",
			give: map[string]string{
				"WARREN_QUEUE": "jobs", "WARREN_QUEUE_TYPE": "quorum", "WARREN_DECLARE": "false",
				"WARREN_EXCHANGE": "ex", "WARREN_EXCHANGE_TYPE": "headers", "WARREN_BINDING_KEYS": "format=pdf,x-match=any",
				"WARREN_PREFETCH": "8", "WARREN_CONCURRENCY": "8", "WARREN_HANDLER": "noop",
				"WARREN_HANDLER_TIMEOUT": "90s", "WARREN_SHUTDOWN_TIMEOUT": "1ms", "WARREN_HEARTBEAT": "1s",
				"WARREN_HEALTH_ADDR": "127.0.0.1:9090", "WARREN_LOG_LEVEL": "debug", "WARREN_LOG_FORMAT": "console",
				"WARREN_CONNECTION_NAME": "pod-1",
			},
			check: func(t *testing.T, c *Config) {
				topo := c.Topology()
				if topo.Queue != "jobs" || topo.QueueType != "quorum" || topo.Declare || topo.Exchange != "ex" ||
					topo.ExchangeType != "headers" || !slices.Equal(topo.BindingKeys, []string{"format=pdf", "x-match=any"}) {
					t.Errorf("Topology() = %+v, want every variable applied", topo)
				}
				if c.Prefetch != 8 || c.Concurrency != 8 || c.Handler != HandlerNoop || c.HandlerTimeout != 90*time.Second ||
					c.ShutdownTimeout != time.Millisecond || c.Heartbeat != time.Second || c.HealthAddr != "127.0.0.1:9090" ||
					c.Log.Level != "debug" || c.Log.Format != "console" || c.ConnectionName != "pod-1" {
					t.Errorf("Load() = %+v, want every variable applied", c)
				}
			},
		},
		{
			name: "tls ca",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_AMQP_URL": "amqps://h/", "WARREN_TLS_CA_FILE": caFile},
			check: func(t *testing.T, c *Config) {
				want := x509.NewCertPool()
				want.AddCert(caCert)
				if c.TLSConfig.RootCAs == nil || !c.TLSConfig.RootCAs.Equal(want) {
					t.Errorf("TLSConfig.RootCAs = %v, want the pool of the CA file", c.TLSConfig.RootCAs)
				}
				if c.TLSConfig.MinVersion != tls.VersionTLS12 {
					t.Errorf("TLSConfig.MinVersion = %x, want TLS 1.2 (%x)", c.TLSConfig.MinVersion, tls.VersionTLS12)
				}
			},
		},
		{
			name: "tls client certificate",
			give: map[string]string{"WARREN_QUEUE": "q", "WARREN_TLS_CERT_FILE": caFile, "WARREN_TLS_KEY_FILE": keyFile},
			check: func(t *testing.T, c *Config) {
				if len(c.TLSConfig.Certificates) != 1 || !c.TLSConfig.Certificates[0].Leaf.Equal(caCert) {
					t.Errorf("TLSConfig.Certificates = %d certificates, want the one of the files", len(c.TLSConfig.Certificates))
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.give)
			c, err := Load()
			if err != nil {
				t.Fatalf("Load() with %q = %v, want nil", tt.give, err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadErrors(t *testing.T) {
	with := func(kv ...string) map[string]string {
		env := map[string]string{"WARREN_QUEUE": "q"}
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	notPEM := writeFile(t, "ca.pem", "not a certificate\n")
	_, certPEM, _ := selfSigned(t)
	_, _, otherKey := selfSigned(t)
	certFile := writeFile(t, "cert.pem", string(certPEM))
	otherKeyFile := writeFile(t, "key.pem", string(otherKey))
	missing := filepath.Join(t.TempDir(), "missing")
	emptyFile := writeFile(t, "empty", "\n")
	const urlWant = "want amqp:// or amqps:// URLs, comma-separated, such as amqp://user:password@host:5672/vhost"
	const shutdownWant = "want a positive duration such as 25s"
	const addrWant = "want a listen address such as :8080 or 127.0.0.1:8080 (host empty, an IP address or localhost; port 0 to 65535)"
	const clusterWant = "want the nodes of one cluster: every URL with the user, password and vhost of the first (this one has another "

	for _, tt := range []struct {
		name string
		give map[string]string
		want string
	}{
		{"no queue", map[string]string{}, `WARREN_QUEUE is not set: want the name of the queue to consume`},
		{"blank queue", with("WARREN_QUEUE", "  "), `WARREN_QUEUE is not set: want the name of the queue to consume`},
		{"long queue", with("WARREN_QUEUE", strings.Repeat("q", 256)), `WARREN_QUEUE="` + strings.Repeat("q", 256) + `": want a queue name of at most 255 bytes`},
		{"reply header not a name", with("WARREN_HTTP_REPLY_HEADERS", "X-Request-Id,X Bad"), `WARREN_HTTP_REPLY_HEADERS="X-Request-Id,X Bad": want names of HTTP headers, comma-separated, such as X-Request-Id,ETag`},
		{"reply on dead not a bool", with("WARREN_REPLY_ON_DEAD", "maybe"), `WARREN_REPLY_ON_DEAD="maybe": want true or false`},
		{"reply not a bool", with("WARREN_REPLY", "maybe"), `WARREN_REPLY="maybe": want true or false`},
		{"reply on dead without replies", with("WARREN_REPLY", "false", "WARREN_REPLY_ON_DEAD", "true"), `WARREN_REPLY_ON_DEAD="true": want false while WARREN_REPLY=false: warren sends no replies, error replies included`},
		{"reply max bytes not a size", with("WARREN_REPLY_MAX_BYTES", "lots"), `WARREN_REPLY_MAX_BYTES="lots": want a size from 1Ki to 128Mi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 1Mi`},
		{"prefetch not a number", with("WARREN_PREFETCH", "abc"), `WARREN_PREFETCH="abc": want an integer from 1 to 65535`},
		{"prefetch empty", with("WARREN_PREFETCH", ""), `WARREN_PREFETCH="": want an integer from 1 to 65535`},
		{"prefetch 0", with("WARREN_PREFETCH", "0"), `WARREN_PREFETCH="0": want an integer from 1 to 65535`},
		{"prefetch too big", with("WARREN_PREFETCH", "70000"), `WARREN_PREFETCH="70000": want an integer from 1 to 65535`},
		{"concurrency above prefetch", with("WARREN_PREFETCH", "2", "WARREN_CONCURRENCY", "3"), `WARREN_CONCURRENCY="3": want an integer from 1 to WARREN_PREFETCH (2)`},
		{"concurrency above the adaptive prefetch's bound", with("WARREN_CONCURRENCY", "1001"), `WARREN_CONCURRENCY="1001": want an integer from 1 to WARREN_MAX_PREFETCH (1000)`},
		{"concurrency above max prefetch", with("WARREN_MAX_PREFETCH", "8", "WARREN_CONCURRENCY", "9"), `WARREN_CONCURRENCY="9": want an integer from 1 to WARREN_MAX_PREFETCH (8)`},
		{"concurrency 0", with("WARREN_CONCURRENCY", "0"), `WARREN_CONCURRENCY="0": want an integer from 1 to WARREN_MAX_PREFETCH (1000)`},
		{"max prefetch 0", with("WARREN_MAX_PREFETCH", "0"), `WARREN_MAX_PREFETCH="0": want an integer from 1 to 65535`},
		{"max prefetch too big", with("WARREN_MAX_PREFETCH", "65536"), `WARREN_MAX_PREFETCH="65536": want an integer from 1 to 65535`},
		{"max inflight bytes 0", with("WARREN_MAX_INFLIGHT_BYTES", "0"), `WARREN_MAX_INFLIGHT_BYTES="0": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes empty", with("WARREN_MAX_INFLIGHT_BYTES", ""), `WARREN_MAX_INFLIGHT_BYTES="": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes negative", with("WARREN_MAX_INFLIGHT_BYTES", "-1Mi"), `WARREN_MAX_INFLIGHT_BYTES="-1Mi": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes below 1Mi", with("WARREN_MAX_INFLIGHT_BYTES", "512Ki"), `WARREN_MAX_INFLIGHT_BYTES="512Ki": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes above 1024Gi", with("WARREN_MAX_INFLIGHT_BYTES", "1025Gi"), `WARREN_MAX_INFLIGHT_BYTES="1025Gi": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes decimal", with("WARREN_MAX_INFLIGHT_BYTES", "1.5Gi"), `WARREN_MAX_INFLIGHT_BYTES="1.5Gi": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes SI suffix", with("WARREN_MAX_INFLIGHT_BYTES", "100MB"), `WARREN_MAX_INFLIGHT_BYTES="100MB": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes space", with("WARREN_MAX_INFLIGHT_BYTES", "64 Mi"), `WARREN_MAX_INFLIGHT_BYTES="64 Mi": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max inflight bytes overflow", with("WARREN_MAX_INFLIGHT_BYTES", "99999999999999999999"), `WARREN_MAX_INFLIGHT_BYTES="99999999999999999999": want a size from 1Mi to 1024Gi: bytes, or a whole number with the suffix Ki, Mi or Gi, such as 256Mi`},
		{"max retry after 0", with("WARREN_MAX_RETRY_AFTER", "0s"), `WARREN_MAX_RETRY_AFTER="0s": want a duration from 1s to 168h, such as 1h`},
		{"max retry after above a week", with("WARREN_MAX_RETRY_AFTER", "169h"), `WARREN_MAX_RETRY_AFTER="169h0m0s": want a duration from 1s to 168h, such as 1h`},
		{"max retry after not a duration", with("WARREN_MAX_RETRY_AFTER", "soon"), `WARREN_MAX_RETRY_AFTER="soon": want a duration from 1s to 168h, such as 1h`},
		{"unknown handler", with("WARREN_HANDLER", "kafka"), `WARREN_HANDLER="kafka": want one of log, noop, http, exec`},
		{"http without url", with("WARREN_HANDLER", "http"), `WARREN_HTTP_URL is not set: want an http:// or https:// URL (WARREN_HANDLER=http)`},
		{"http url not http", with("WARREN_HANDLER", "http", "WARREN_HTTP_URL", "ftp://files/in"), `WARREN_HTTP_URL="ftp://files/in": want an http:// or https:// URL`},
		{"http url password", with("WARREN_HANDLER", "http", "WARREN_HTTP_URL", "ftp://u:s3cret@files/"), `WARREN_HTTP_URL="ftp://u:xxxxx@files/": want an http:// or https:// URL`},
		{"exec without command", with("WARREN_HANDLER", "exec"), `WARREN_EXEC_COMMAND is not set: want a shell command (WARREN_HANDLER=exec)`},
		{"exec blank command", with("WARREN_HANDLER", "exec", "WARREN_EXEC_COMMAND", " "), `WARREN_EXEC_COMMAND is not set: want a shell command (WARREN_HANDLER=exec)`},
		{"negative handler timeout", with("WARREN_HANDLER_TIMEOUT", "-1s"), `WARREN_HANDLER_TIMEOUT="-1s": want a positive duration such as 30s or 5m`},
		{"zero handler timeout", with("WARREN_HANDLER_TIMEOUT", "0"), `WARREN_HANDLER_TIMEOUT="0s": want a positive duration such as 30s or 5m`},
		{"bad duration", with("WARREN_HANDLER_TIMEOUT", "soon"), `WARREN_HANDLER_TIMEOUT="soon": want a positive duration such as 30s or 5m`},
		{"duration without unit", with("WARREN_HANDLER_TIMEOUT", "30"), `WARREN_HANDLER_TIMEOUT="30": want a positive duration such as 30s or 5m`},
		{"negative shutdown timeout", with("WARREN_SHUTDOWN_TIMEOUT", "-5s"), `WARREN_SHUTDOWN_TIMEOUT="-5s": ` + shutdownWant},
		// The worker takes 0 for its default, 25s: refused rather than
		// meaning the opposite of what it says.
		{"zero shutdown timeout", with("WARREN_SHUTDOWN_TIMEOUT", "0s"), `WARREN_SHUTDOWN_TIMEOUT="0s": ` + shutdownWant},
		{"zero shutdown timeout without unit", with("WARREN_SHUTDOWN_TIMEOUT", "0"), `WARREN_SHUTDOWN_TIMEOUT="0s": ` + shutdownWant},
		{"queue whose retry queue is too long", with("WARREN_QUEUE", strings.Repeat("q", 250), "WARREN_RETRY_DELAYS", "1s,10m"),
			`WARREN_QUEUE="` + strings.Repeat("q", 250) + `": want a queue name short enough that the names warren derives from it fit 255 bytes (the longest, <queue>.retry.10m, would be 260 bytes)`},
		{"queue whose dead queue is too long", with("WARREN_QUEUE", strings.Repeat("q", 251), "WARREN_RETRY_DELAYS", ""),
			`WARREN_QUEUE="` + strings.Repeat("q", 251) + `": want a queue name short enough that the names warren derives from it fit 255 bytes (the longest, <queue>.dead, would be 256 bytes)`},
		{"url port too big", with("WARREN_AMQP_URL", "amqp://u:s3cret@host:99999/"), `WARREN_AMQP_URL: the URL does not parse: port out of range 1-65535; ` + urlWant},
		{"url port 0", with("WARREN_AMQP_URL", "amqp://host:0/"), `WARREN_AMQP_URL: the URL does not parse: port out of range 1-65535; ` + urlWant},
		{"url file port too big", with("WARREN_AMQP_URL_FILE", writeFile(t, "big-port", "amqp://u:s3cret@a/,amqp://u:s3cret@b:65536/\n")),
			`WARREN_AMQP_URL_FILE: URL 2 of 2 does not parse: port out of range 1-65535; ` + urlWant},
		{"url with an @ after the host", with("WARREN_AMQP_URL", "amqp://u:12/s3cret@host/"),
			`WARREN_AMQP_URL: the URL does not parse: an @ after the host (percent-encode /, ? and # in the user and password); ` + urlWant},
		{"url with a quote in the password", with("WARREN_AMQP_URL", `amqp://u:s3"cret@host/`),
			`WARREN_AMQP_URL: the URL does not parse: the user or password holds a character that must be percent-encoded; ` + urlWant},
		{"http dead status 399", with("WARREN_HTTP_DEAD_STATUSES", "400,399"), `WARREN_HTTP_DEAD_STATUSES="400,399": want HTTP statuses from 400 to 599, comma-separated`},
		{"http dead status 600", with("WARREN_HTTP_DEAD_STATUSES", "600"), `WARREN_HTTP_DEAD_STATUSES="600": want HTTP statuses from 400 to 599, comma-separated`},
		{"http dead status not a number", with("WARREN_HTTP_DEAD_STATUSES", "4xx"), `WARREN_HTTP_DEAD_STATUSES="4xx": want HTTP statuses from 400 to 599, comma-separated`},
		{"health addr bad ip", with("WARREN_HEALTH_ADDR", "256.1.1.1:80"), `WARREN_HEALTH_ADDR="256.1.1.1:80": ` + addrWant},
		{"health addr host name", with("WARREN_HEALTH_ADDR", "example.invalid:8080"), `WARREN_HEALTH_ADDR="example.invalid:8080": ` + addrWant},
		{"health addr leading space", with("WARREN_HEALTH_ADDR", " :8080"), `WARREN_HEALTH_ADDR=" :8080": ` + addrWant},
		{"health addr port too big", with("WARREN_HEALTH_ADDR", ":65536"), `WARREN_HEALTH_ADDR=":65536": ` + addrWant},
		{"health addr negative port", with("WARREN_HEALTH_ADDR", ":-1"), `WARREN_HEALTH_ADDR=":-1": ` + addrWant},
		{"heartbeat 0", with("WARREN_HEARTBEAT", "0"), `WARREN_HEARTBEAT="0s": want a duration from 1s to 10m, such as 10s`},
		{"heartbeat too long", with("WARREN_HEARTBEAT", "11m"), `WARREN_HEARTBEAT="11m0s": want a duration from 1s to 10m, such as 10s`},
		{"stream queue", with("WARREN_QUEUE_TYPE", "stream"), `WARREN_QUEUE_TYPE="stream": want classic or quorum`},
		{"bad exchange type", with("WARREN_EXCHANGE", "ex", "WARREN_EXCHANGE_TYPE", "x-delayed-message"), `WARREN_EXCHANGE_TYPE="x-delayed-message": want direct, fanout, topic or headers`},
		{"headers key without =", with("WARREN_EXCHANGE", "ex", "WARREN_EXCHANGE_TYPE", "headers", "WARREN_BINDING_KEYS", "format=pdf,urgent"), `WARREN_BINDING_KEYS="format=pdf,urgent": want name=value pairs for a headers exchange`},
		{"headers key without name", with("WARREN_EXCHANGE", "ex", "WARREN_EXCHANGE_TYPE", "headers", "WARREN_BINDING_KEYS", "=pdf"), `WARREN_BINDING_KEYS="=pdf": want name=value pairs for a headers exchange`},
		{"declare maybe", with("WARREN_DECLARE", "maybe"), `WARREN_DECLARE="maybe": want true or false`},
		{"log level", with("WARREN_LOG_LEVEL", "verbose"), `WARREN_LOG_LEVEL="verbose": want one of debug, info, warn, error`},
		{"log format", with("WARREN_LOG_FORMAT", "text"), `WARREN_LOG_FORMAT="text": want json or console`},
		{"circuit yes", with("WARREN_CIRCUIT", "true"), `WARREN_CIRCUIT="true": want on or off`},
		{"circuit failures 0", with("WARREN_CIRCUIT_FAILURES", "0"), `WARREN_CIRCUIT_FAILURES="0": want an integer from 1 to 10000`},
		{"circuit failures a ratio", with("WARREN_CIRCUIT_FAILURES", "50%"), `WARREN_CIRCUIT_FAILURES="50%": want an integer from 1 to 10000`},
		{"circuit window short", with("WARREN_CIRCUIT_WINDOW", "500ms"), `WARREN_CIRCUIT_WINDOW="500ms": want a duration from 1s to 24h, such as 30s`},
		{"circuit window no unit", with("WARREN_CIRCUIT_WINDOW", "30"), `WARREN_CIRCUIT_WINDOW="30": want a duration from 1s to 24h, such as 30s`},
		{"circuit probe interval long", with("WARREN_CIRCUIT_MAX_PROBE_INTERVAL", "2h"), `WARREN_CIRCUIT_MAX_PROBE_INTERVAL="2h0m0s": want a duration from 10ms to 1h, such as 1m`},
		{"rate limit negative", with("WARREN_RATE_LIMIT", "-1"), `WARREN_RATE_LIMIT="-1": want 0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5`},
		{"rate limit too high", with("WARREN_RATE_LIMIT", "1e6"), `WARREN_RATE_LIMIT="1e+06": want 0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5`},
		{"rate limit not a number", with("WARREN_RATE_LIMIT", "NaN"), `WARREN_RATE_LIMIT="NaN": want 0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5`},
		{"rate limit infinite", with("WARREN_RATE_LIMIT", "Inf"), `WARREN_RATE_LIMIT="+Inf": want 0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5`},
		{"rate limit per minute", with("WARREN_RATE_LIMIT", "100/m"), `WARREN_RATE_LIMIT="100/m": want 0 (no limit), or messages per second up to 100000, fractions allowed, such as 20 or 0.5`},
		{"dead exit code 0", with("WARREN_EXEC_DEAD_EXIT_CODES", "0"), `WARREN_EXEC_DEAD_EXIT_CODES="0": want exit codes from 1 to 255, comma-separated`},
		{"dead exit code 300", with("WARREN_EXEC_DEAD_EXIT_CODES", "3,300"), `WARREN_EXEC_DEAD_EXIT_CODES="3,300": want exit codes from 1 to 255, comma-separated`},
		{"exec env of warren's own", with("WARREN_EXEC_ENV", "HOME2,WARREN_AMQP_URL"), `WARREN_EXEC_ENV="HOME2,WARREN_AMQP_URL": want names of environment variables, comma-separated, none of them WARREN_* (warren's own settings and secrets)`},
		{"exec env not a name", with("WARREN_EXEC_ENV", "A=B"), `WARREN_EXEC_ENV="A=B": want names of environment variables, comma-separated, none of them WARREN_* (warren's own settings and secrets)`},
		{"exec env starts with a digit", with("WARREN_EXEC_ENV", "1X"), `WARREN_EXEC_ENV="1X": want names of environment variables, comma-separated, none of them WARREN_* (warren's own settings and secrets)`},
		{"exec env empty name", with("WARREN_EXEC_ENV", "A,,B"), `WARREN_EXEC_ENV="A,,B": want names of environment variables, comma-separated, none of them WARREN_* (warren's own settings and secrets)`},
		{"dead exit code x", with("WARREN_EXEC_DEAD_EXIT_CODES", "x"), `WARREN_EXEC_DEAD_EXIT_CODES="x": want exit codes from 1 to 255, comma-separated`},
		{"health addr without colon", with("WARREN_HEALTH_ADDR", "8080"), `WARREN_HEALTH_ADDR="8080": ` + addrWant},
		{"health addr bad port", with("WARREN_HEALTH_ADDR", ":http"), `WARREN_HEALTH_ADDR=":http": ` + addrWant},
		{"url not amqp", with("WARREN_AMQP_URL", "http://user:s3cret@host/"), `WARREN_AMQP_URL: the URL does not parse: the scheme is not amqp:// or amqps://; ` + urlWant},
		{"second url bad", with("WARREN_AMQP_URL", "amqp://a/,ftp://b/"), `WARREN_AMQP_URL: URL 2 of 2 does not parse: the scheme is not amqp:// or amqps://; ` + urlWant},
		{"url empty", with("WARREN_AMQP_URL", " , "), `WARREN_AMQP_URL is not set: ` + urlWant},
		// A comma in a password splits the URL; no piece of it may reach
		// the error.
		{"comma in password", with("WARREN_AMQP_URL", "amqp://user:1234,s3cret@host/"), `WARREN_AMQP_URL: URL 2 of 2 does not parse: no scheme; ` + urlWant},
		{"commas in password", with("WARREN_AMQP_URL", "amqp://user:1,s3cret,x@host/"), `WARREN_AMQP_URL: URL 2 of 3 does not parse: no scheme; ` + urlWant},
		// The nodes of one cluster share its credentials and vhost.
		{"urls with two vhosts", with("WARREN_AMQP_URL", "amqp://u:s3cret@a/,amqp://u:s3cret@b/other"), `WARREN_AMQP_URL="amqp://u:xxxxx@b/other": ` + clusterWant + "vhost)"},
		{"urls with two users", with("WARREN_AMQP_URL", "amqp://u:s3cret@a/,amqp://v:s3cret@b/"), `WARREN_AMQP_URL="amqp://v:xxxxx@b/": ` + clusterWant + "user)"},
		{"urls with two passwords", with("WARREN_AMQP_URL", "amqp://u:s3cret@a/,amqp://u:s3cret2@b/"), `WARREN_AMQP_URL="amqp://u:xxxxx@b/": ` + clusterWant + "password)"},
		{"default user beside another", with("WARREN_AMQP_URL", "amqp://a/,amqp://u:s3cret@b/"), `WARREN_AMQP_URL="amqp://u:xxxxx@b/": ` + clusterWant + "user)"},
		{"default vhost beside another", with("WARREN_AMQP_URL", "amqp://u:p@a:5672,amqp://u:p@b/%2Fx"), `WARREN_AMQP_URL="amqp://u:xxxxx@b/%2Fx": ` + clusterWant + "vhost)"},
		{"url file with two vhosts", with("WARREN_AMQP_URL_FILE", writeFile(t, "two-vhosts", "amqp://u:s3cret@a/v,amqp://u:s3cret@b/w\n")), `WARREN_AMQP_URL_FILE="amqp://u:xxxxx@b/w": ` + clusterWant + "vhost)"},
		{"url without scheme", with("WARREN_AMQP_URL", "localhost:5672"), `WARREN_AMQP_URL: the URL does not parse: no scheme; ` + urlWant},
		{"url file holds a bad url", with("WARREN_AMQP_URL_FILE", writeFile(t, "bad-url", "http://user:s3cret@host/\n")), `WARREN_AMQP_URL_FILE: the URL does not parse: the scheme is not amqp:// or amqps://; ` + urlWant},
		{"url file missing", with("WARREN_AMQP_URL_FILE", missing), `WARREN_AMQP_URL_FILE="` + missing + `": want a readable file holding the broker URL (no such file or directory)`},
		{"url file empty", with("WARREN_AMQP_URL_FILE", emptyFile), `WARREN_AMQP_URL_FILE="` + emptyFile + `": want a readable file holding the broker URL (the file is empty)`},
		{"tls ca not pem", with("WARREN_TLS_CA_FILE", notPEM), `WARREN_TLS_CA_FILE="` + notPEM + `": want a readable PEM file of CA certificates`},
		{"tls ca missing", with("WARREN_TLS_CA_FILE", missing), `WARREN_TLS_CA_FILE="` + missing + `": want a readable PEM file of CA certificates`},
		{"tls cert without key", with("WARREN_TLS_CERT_FILE", certFile), `WARREN_TLS_KEY_FILE is not set: want a readable PEM key, with WARREN_TLS_CERT_FILE`},
		{"tls key without cert", with("WARREN_TLS_KEY_FILE", otherKeyFile), `WARREN_TLS_CERT_FILE is not set: want a readable PEM certificate, with WARREN_TLS_KEY_FILE`},
		{"tls key of another cert", with("WARREN_TLS_CERT_FILE", certFile, "WARREN_TLS_KEY_FILE", otherKeyFile), `WARREN_TLS_CERT_FILE="` + certFile + `": want a readable PEM certificate, with WARREN_TLS_KEY_FILE`},
		// The OpenTelemetry variables are configuration like any other.
		{"otlp endpoint without scheme", with("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"), `OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317": want an http:// or https:// URL with a host, such as http://otel-collector:4318`},
		{"otlp protocol json", with("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), `OTEL_EXPORTER_OTLP_PROTOCOL="http/json": want grpc or http/protobuf (http/json is not supported)`},
		{"sampler unknown, tracing off", with("OTEL_TRACES_SAMPLER", "always"), `OTEL_TRACES_SAMPLER="always": want always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio`},
		{"sampler ratio above 1", with("OTEL_TRACES_SAMPLER_ARG", "1.5"), `OTEL_TRACES_SAMPLER_ARG="1.5": want a ratio from 0 to 1, such as 0.1`},
		{"resource attribute without value", with("OTEL_RESOURCE_ATTRIBUTES", "team"), `OTEL_RESOURCE_ATTRIBUTES="team": want key=value pairs, comma-separated, such as deployment.environment=prod,team=payments (values percent-encoded)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.give)
			c, err := Load()
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Load() with %q = %+v, %v; want an *Error", tt.give, c, err)
			}
			if c != nil {
				t.Errorf("Load() with %q = %+v with an error, want nil", tt.give, c)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Load() with %q = %q, want %q", tt.give, got, tt.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("Load() with %q = %q, which holds the password", tt.give, err)
			}
		})
	}
}

func TestUnknown(t *testing.T) {
	for _, tt := range []struct {
		give []string
		want []string
	}{
		{nil, nil},
		{[]string{"WARREN_QUEUE=q", "WARREN_PREFETCH=1", "WARREN_AMQP_URL_FILE=/f", "WARREN_EXEC_DEAD_EXIT_CODES=3", "WARREN_TLS_CA_FILE=/ca"}, nil},
		{[]string{"WARREN_QUEUE=q", "WARREN_PREFECTH=1"}, []string{"WARREN_PREFECTH"}},
		{[]string{"WARREN_TLS_CA=/ca", "WARREN_QUEUE=q", "WARREN_AMQP_URI=amqp://x/"}, []string{"WARREN_AMQP_URI", "WARREN_TLS_CA"}},
		{[]string{"WARREN_AMQP=x"}, []string{"WARREN_AMQP"}}, // a struct, not a variable
		// Kubernetes' service links for a Service named warren.
		{[]string{
			"WARREN_PORT=tcp://10.0.0.1:8080", "WARREN_PORT_8080_TCP=tcp://10.0.0.1:8080", "WARREN_PORT_8080_TCP_ADDR=10.0.0.1",
			"WARREN_PORT_8080_TCP_PORT=8080", "WARREN_PORT_8080_TCP_PROTO=tcp", "WARREN_SERVICE_HOST=10.0.0.1",
			"WARREN_SERVICE_PORT=8080", "WARREN_SERVICE_PORT_HTTP=8080",
		}, nil},
		{[]string{"PATH=/bin", "WARRENQUEUE=q", "warren_queue=q", "HOME=/root"}, nil},
		{[]string{"WARREN_=x"}, []string{"WARREN_"}},
	} {
		if got := Unknown(tt.give); !slices.Equal(got, tt.want) {
			t.Errorf("Unknown(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

func TestUsage(t *testing.T) {
	var b bytes.Buffer
	if err := Usage(&b); err != nil {
		t.Fatalf("Usage() = %v, want nil", err)
	}
	out := b.String()
	for _, want := range []string{"WARREN_AMQP_URL ", "WARREN_AMQP_URL_FILE", "WARREN_PREFETCH", "WARREN_TLS_CA_FILE", "WARREN_EXEC_DEAD_EXIT_CODES", "amqp://guest:guest@localhost:5672/"} {
		if !strings.Contains(out, want) {
			t.Errorf("Usage() output lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "VARIABLE") {
		t.Fatalf("Usage() output has no header line:\n%s", out)
	}
	seen := map[string]bool{}
	for _, line := range lines[1:] {
		key, _, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(key, Prefix+"_") && !strings.HasPrefix(key, "OTEL_") {
			t.Errorf("Usage() lists %q, want only WARREN_* and OTEL_* variables", key)
		}
		seen[key] = true
	}
	// Every variable an error can name is documented.
	for _, v := range tracing.Variables {
		if !seen[v.Name] {
			t.Errorf("Usage() does not list %s", v.Name)
		}
	}
	for name := range wants {
		if !seen[name] {
			t.Errorf("Usage() does not list %s", name)
		}
	}
}

// FuzzLoad feeds arbitrary values to the variables most often got wrong.
// Load must not panic, and must either return a valid configuration or an
// *Error naming a WARREN_* variable, without the broker password.
func FuzzLoad(f *testing.F) {
	f.Add("16", "4", "1m", "amqp://guest:guest@localhost:5672/", "", false)
	f.Add("0x10", "16", "1h", "amqps://user:pa%2Css@h1/vh, amqp://user:pa%2Css@h2:5673/vh", "a=1,b=2", true)
	f.Add("abc", "-1", "-1s", "http://user:s3cretpw@host/", "x", true)
	f.Add("65536", "4", "soon", "amqp://user:1234,s3cretpw@host/", "a,b", false)
	f.Add("1", "1", "1ns", "amqp://u:p@[::1]:5672/%2f", "=x,y=", true)
	clearEnv(f)
	f.Fuzz(func(t *testing.T, prefetch, concurrency, timeout, rawURL, keys string, headers bool) {
		env := map[string]string{
			"WARREN_QUEUE":           "q",
			"WARREN_PREFETCH":        prefetch,
			"WARREN_CONCURRENCY":     concurrency,
			"WARREN_HANDLER_TIMEOUT": timeout,
			"WARREN_AMQP_URL":        rawURL,
			"WARREN_BINDING_KEYS":    keys,
		}
		if headers {
			env["WARREN_EXCHANGE"] = "ex"
			env["WARREN_EXCHANGE_TYPE"] = "headers"
		}
		for k, v := range env {
			if strings.IndexByte(v, 0) >= 0 {
				t.Skip("an environment variable cannot hold NUL")
			}
			t.Setenv(k, v)
		}
		c, err := Load()
		if err == nil {
			if c.Prefetch < 1 || c.Prefetch > 65535 || c.Concurrency < 1 || c.Concurrency > c.Prefetch || c.HandlerTimeout <= 0 {
				t.Fatalf("Load() = %+v, nil: limits not enforced", c)
			}
			if len(c.URLs) == 0 {
				t.Fatalf("Load() = %+v, nil: no broker URL", c)
			}
			for _, u := range c.URLs {
				if _, err := amqp.ParseURI(u); err != nil {
					t.Fatalf("Load() accepted URL %q: %v", u, err)
				}
			}
			return
		}
		var cerr *Error
		if !errors.As(err, &cerr) {
			t.Fatalf("Load() = %v (%T), want an *Error", err, err)
		}
		text := err.Error()
		if !strings.HasPrefix(text, "WARREN_") || !strings.HasPrefix(text, cerr.Var) {
			t.Fatalf("Load() = %q, want it to start with the variable's name %s", text, cerr.Var)
		}
		for _, pw := range passwords(rawURL) {
			if leaks(text, pw, env) {
				t.Fatalf("Load() with WARREN_AMQP_URL=%q = %q, which holds the password %q", rawURL, text, pw)
			}
		}
	})
}

// passwords returns the passwords a URL variable holds: of the whole value
// and of each comma-separated piece, decoded and as written, and the
// pieces of a password that holds a comma.
func passwords(raw string) []string {
	var pws []string
	for _, s := range append(strings.Split(raw, ","), raw) {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.User == nil {
			continue
		}
		if pw, ok := u.User.Password(); ok {
			pws = append(pws, pw)
			pws = append(pws, strings.Split(pw, ",")...)
		}
		if _, pw, ok := strings.Cut(u.User.String(), ":"); ok {
			pws = append(pws, pw)
		}
	}
	return pws
}

// leaks reports whether text shows pw. Short passwords, and passwords that
// appear elsewhere than in the user information (in what is expected, in
// another variable, in the host, or next to the redaction mark), would
// match by chance, and are not judged.
func leaks(text, pw string, env map[string]string) bool {
	if len(pw) < 6 || strings.Contains(pw, "xx") {
		return false
	}
	for _, want := range wants {
		if strings.Contains(want, pw) {
			return false
		}
	}
	for k, v := range env {
		if k != "WARREN_AMQP_URL" && strings.Contains(v, pw) {
			return false
		}
	}
	if strings.Count(env["WARREN_AMQP_URL"], pw) > 1 {
		return false
	}
	return strings.Contains(text, pw)
}

// FuzzLoadLists feeds arbitrary values to the list and number variables
// that FuzzLoad leaves alone. Load must not panic, and must either return
// a configuration within every limit or an *Error naming a variable.
func FuzzLoadLists(f *testing.F) {
	f.Add("1s,10s,1m", "5", "0", "classic", "", "", "10s", ":8080")
	f.Add("", "1000", "20", "quorum", "3,75", "API_TOKEN,PYTHONPATH", "1s", "127.0.0.1:0")
	f.Add("0s,-1s", "0", "-1", "stream", "0,256", "WARREN_AMQP_URL", "0", "8080")
	f.Add("1ms,24h1ns", "1001", "1001", "", "x", "A=B", "10m1s", "[::1]:99999")
	f.Add(",,", "1e3", "0x10", "Quorum", "255,,1", "1X,_", "1h", ":http")
	clearEnv(f)
	f.Fuzz(func(t *testing.T, delays, attempts, limit, queueType, deadCodes, execEnv, heartbeat, healthAddr string) {
		env := map[string]string{
			"WARREN_QUEUE":                "q",
			"WARREN_RETRY_DELAYS":         delays,
			"WARREN_MAX_ATTEMPTS":         attempts,
			"WARREN_DELIVERY_LIMIT":       limit,
			"WARREN_QUEUE_TYPE":           queueType,
			"WARREN_EXEC_DEAD_EXIT_CODES": deadCodes,
			"WARREN_EXEC_ENV":             execEnv,
			"WARREN_HEARTBEAT":            heartbeat,
			"WARREN_HEALTH_ADDR":          healthAddr,
		}
		for k, v := range env {
			if strings.IndexByte(v, 0) >= 0 {
				t.Skip("an environment variable cannot hold NUL")
			}
			t.Setenv(k, v)
		}
		c, err := Load()
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) || !strings.HasPrefix(err.Error(), cerr.Var) || !strings.HasPrefix(cerr.Var, "WARREN_") {
				t.Fatalf("Load() = %v (%T), want an *Error that starts with the variable's name", err, err)
			}
			return
		}
		for _, d := range c.RetryDelays {
			if d < time.Millisecond || d > 24*time.Hour {
				t.Fatalf("Load() accepted the retry delay %s", d)
			}
		}
		for _, code := range c.Exec.DeadExitCodes {
			if code < 1 || code > 255 {
				t.Fatalf("Load() accepted the dead exit code %d", code)
			}
		}
		for _, name := range c.Exec.Env {
			if name == "" || strings.HasPrefix(name, "WARREN_") || strings.ContainsAny(name, "= ,") {
				t.Fatalf("Load() accepted %q in WARREN_EXEC_ENV", name)
			}
		}
		switch {
		case c.MaxAttempts < 1 || c.MaxAttempts > 1000:
			t.Fatalf("Load() accepted WARREN_MAX_ATTEMPTS=%d", c.MaxAttempts)
		case c.DeliveryLimit < 0 || c.DeliveryLimit > 1000 || c.DeliveryLimit > 0 && c.QueueType != "quorum":
			t.Fatalf("Load() accepted WARREN_DELIVERY_LIMIT=%d with %s", c.DeliveryLimit, c.QueueType)
		case c.QueueType != "classic" && c.QueueType != "quorum":
			t.Fatalf("Load() accepted WARREN_QUEUE_TYPE=%q", c.QueueType)
		case c.Heartbeat < time.Second || c.Heartbeat > 10*time.Minute:
			t.Fatalf("Load() accepted WARREN_HEARTBEAT=%s", c.Heartbeat)
		}
		if _, port, err := net.SplitHostPort(c.HealthAddr); err != nil {
			t.Fatalf("Load() accepted WARREN_HEALTH_ADDR=%q: %v", c.HealthAddr, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			t.Fatalf("Load() accepted WARREN_HEALTH_ADDR=%q", c.HealthAddr)
		}
	})
}
