package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/brokertest"
)

// install replaces a file the way a Kubernetes Secret update does: a new
// file renamed over the old one.
func install(t *testing.T, path string, content []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// secret returns a password no test output holds by chance.
func secret(t *testing.T) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "Pw-" + hex.EncodeToString(b[:])
}

// procFiles returns what /proc shows of a process to anyone on the host:
// its command line (the process title) and, to root, its environment.
func procFiles(t *testing.T, p *proc) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, name := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", p.cmd.Process.Pid, name))
		if err != nil {
			t.Fatalf("read /proc/%d/%s: %v", p.cmd.Process.Pid, name, err)
		}
		files["/proc/pid/"+name] = string(b)
	}
	return files
}

// noSecret fails the test if any of outputs holds one of secrets.
func noSecret(t *testing.T, outputs map[string]string, secrets ...string) {
	t.Helper()
	for what, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the password appears in %s:\n%s", what, out)
			}
		}
	}
}

// TestTLSRefusalIsRetriedAndRotatedFilesTakeEffect runs warren against a
// TLS listener that requires a client certificate, with the wrong CA: the
// handshake is refused, the error names the cause, warren retries and is
// not ready. Once the CA file is replaced, as a rotated Secret is, warren
// connects at its next attempt, without a restart.
func TestTLSRefusalIsRetriedAndRotatedFilesTakeEffect(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := brokertest.NewCA(t, "warren-ca"), brokertest.NewCA(t, "other-ca")
	proxy := brokertest.NewTLSProxy(t, brokertest.URL(),
		ca.Issue(t, brokertest.CertOptions{Hosts: []string{"localhost"}}).TLS, ca.Pool())
	certFile, keyFile := ca.Issue(t, brokertest.CertOptions{Client: true}).WriteFiles(t, dir, "client")
	caFile := filepath.Join(dir, "ca.pem")
	install(t, caFile, otherCA.PEM)
	u, err := url.Parse(brokertest.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme, u.Host = "amqps", fmt.Sprintf("localhost:%d", proxy.Port())

	q := brokertest.Queue(t)
	p := startWarren(t, []string{"WARREN_AMQP_URL=" + u.String(), "WARREN_QUEUE=" + q,
		"WARREN_TLS_CA_FILE=" + caFile, "WARREN_TLS_CERT_FILE=" + certFile, "WARREN_TLS_KEY_FILE=" + keyFile})
	brokertest.WaitFor(t, 20*time.Second, "two refused handshakes: the refusal is retried", func() bool {
		_, refused := proxy.Handshakes()
		return len(refused) >= 2
	})
	code, body := p.status("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "certificate signed by unknown authority") ||
		!strings.Contains(body, "WARREN_TLS_CA_FILE") {
		t.Errorf("GET /readyz with the wrong CA = %d %q, want 503 naming the unknown authority and WARREN_TLS_CA_FILE", code, body)
	}
	if !strings.Contains(p.out.String(), "certificate signed by unknown authority") {
		t.Errorf("warren did not log the refused certificate:\n%s", p.out.String())
	}
	select {
	case <-p.done:
		t.Fatalf("warren exited %d on a TLS refusal, want it to retry", p.cmd.ProcessState.ExitCode())
	default:
	}

	install(t, caFile, ca.PEM)
	p.waitStatus(t, "/readyz", http.StatusOK)
	// One for each of warren's connections: the consuming one and the
	// copies' one, both opened before warren is ready.
	if ok, _ := proxy.Handshakes(); ok != 2 {
		t.Errorf("listener completed %d handshakes, want 2", ok)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
}

// TestRotatedPasswordTakesEffectOnReconnect changes the password of a user
// of the broker and then the URL file, as rotating a Secret does: warren
// keeps running, cannot log in meanwhile, and is back as soon as the file
// holds the new password. No password shows anywhere.
func TestRotatedPasswordTakesEffectOnReconnect(t *testing.T) {
	brokertest.NeedCtl(t)
	user := brokertest.Name(t)
	oldPW, newPW := secret(t), secret(t)
	brokertest.Ctl(t, "add_user", user, oldPW)
	t.Cleanup(func() { brokertest.Ctl(t, "delete_user", user) })
	brokertest.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")

	withUser := func(pw string) []byte {
		u, err := url.Parse(brokertest.URL())
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(user, pw)
		return []byte(u.String() + "\n")
	}
	urlFile := filepath.Join(t.TempDir(), "url")
	install(t, urlFile, withUser(oldPW))
	q := brokertest.Queue(t)
	name := brokertest.Name(t)
	p := startWarren(t, []string{"WARREN_AMQP_URL_FILE=" + urlFile, "WARREN_QUEUE=" + q,
		"WARREN_CONNECTION_NAME=" + name, "WARREN_LOG_LEVEL=debug"})
	p.waitStatus(t, "/readyz", http.StatusOK)
	outputs := procFiles(t, p)

	brokertest.Ctl(t, "change_password", user, newPW)
	if n := brokertest.CloseConnections(t, name); n != 1 {
		t.Fatalf("broker closed %d connections named %q, want 1", n, name)
	}
	var refused string
	brokertest.WaitFor(t, 20*time.Second, "the old password refused", func() bool {
		_, refused = p.status("/readyz")
		return strings.Contains(refused, "username or password not allowed")
	})
	outputs["/readyz while refused"] = refused
	_, outputs["/metrics while refused"] = p.status("/metrics")

	install(t, urlFile, withUser(newPW))
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "after the rotation")
	brokertest.WaitFor(t, 10*time.Second, "a message handled with the new password", func() bool {
		return strings.Contains(p.out.String(), `"body":"after the rotation"`)
	})
	if n := strings.Count(p.out.String(), `"msg":"starting"`); n != 1 {
		t.Errorf("warren started %d times, want once: no restart", n)
	}
	_, outputs["/metrics"] = p.status("/metrics")
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
	outputs["log"] = p.out.String()
	noSecret(t, outputs, oldPW, newPW)
}

// TestPasswordNeverInProcessTitleOrStackDump: the password is not in
// what ps shows, and not in the goroutine dump Go prints on SIGQUIT, as
// it does on a panic.
func TestPasswordNeverInProcessTitleOrStackDump(t *testing.T) {
	pw := secret(t)
	q := brokertest.Queue(t)
	u, err := url.Parse(brokertest.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("nobody", pw)
	urlFile := filepath.Join(t.TempDir(), "url")
	install(t, urlFile, []byte(u.String()))
	for _, tt := range []struct {
		name string
		env  []string
	}{
		{"url file", []string{"WARREN_AMQP_URL_FILE=" + urlFile}},
		{"url variable", []string{"WARREN_AMQP_URL=" + u.String()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startWarren(t, append(tt.env, "WARREN_QUEUE="+q, "WARREN_LOG_LEVEL=debug"))
			brokertest.WaitFor(t, 20*time.Second, "a login refused", func() bool {
				return strings.Contains(p.out.String(), "username or password not allowed")
			})
			outputs := procFiles(t, p)
			if tt.name == "url variable" {
				delete(outputs, "/proc/pid/environ") // it holds what it was given
			}
			p.signal(t, syscall.SIGQUIT)
			if code := p.wait(t, 30*time.Second); code != 2 {
				t.Errorf("warren exited %d after SIGQUIT, want 2 with a goroutine dump", code)
			}
			outputs["goroutine dump"] = p.out.String()
			if !strings.Contains(p.out.String(), "goroutine ") {
				t.Errorf("no goroutine dump after SIGQUIT:\n%s", p.out.String())
			}
			noSecret(t, outputs, pw)
		})
	}
}

// TestExecCommandGetsAMinimalEnvironment: the command a message runs sees
// what programs need and what WARREN_EXEC_ENV names, never warren's broker
// URL, TLS files or the rest of its environment.
func TestExecCommandGetsAMinimalEnvironment(t *testing.T) {
	dir := t.TempDir()
	token := secret(t)
	caFile := brokertest.NewCA(t, "warren-ca").WriteFile(t, dir)
	q := brokertest.Queue(t)
	out := filepath.Join(dir, "env")
	p := startWarren(t, []string{"WARREN_AMQP_URL=" + brokertest.URL(), "WARREN_QUEUE=" + q,
		"WARREN_TLS_CA_FILE=" + caFile, "WARREN_HANDLER=exec", "WARREN_EXEC_COMMAND=env > " + out,
		"WARREN_EXEC_ENV=PASSED_ON", "PASSED_ON=yes", "SIDECAR_TOKEN=" + token, "LANG=C.UTF-8", "TZ=UTC"})
	p.waitStatus(t, "/readyz", http.StatusOK)
	brokertest.Publish(t, q, "m-1")
	var env map[string]string
	brokertest.WaitFor(t, 10*time.Second, "the command's environment", func() bool {
		b, err := os.ReadFile(out)
		if err != nil {
			return false
		}
		env = map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				env[k] = v
			}
		}
		return env["WARREN_MESSAGE_ID"] == "m-1"
	})
	for _, tt := range []struct {
		give string
		want string // "" for absent
	}{
		{"PASSED_ON", "yes"},
		{"PATH", os.Getenv("PATH")},
		{"LANG", "C.UTF-8"},
		{"TZ", "UTC"},
		{"WARREN_ATTEMPT", "1"},
		{"WARREN_AMQP_URL", ""},
		{"WARREN_TLS_CA_FILE", ""},
		{"WARREN_EXEC_COMMAND", ""},
		{"WARREN_EXEC_ENV", ""},
		{"WARREN_HEALTH_ADDR", ""},
		{"SIDECAR_TOKEN", ""},
		{"GORACE", ""},
	} {
		if got, ok := env[tt.give]; got != tt.want || (tt.want == "") == ok {
			t.Errorf("command saw %s=%q (set: %v), want %q", tt.give, got, ok, tt.want)
		}
	}
	for k, v := range env {
		if strings.Contains(v, token) || strings.Contains(v, brokertest.URL()) || strings.Contains(v, caFile) {
			t.Errorf("command saw %s=%q, which holds a secret of warren's", k, v)
		}
	}
}

// TestRotatedBadURLNeverShown rotates the URL file, while warren runs, to
// URLs that do not parse because their password holds a character that
// must be percent-encoded. warren keeps running and says why it cannot
// connect, and neither its log nor the unauthenticated /readyz shows the
// password or any piece of it.
func TestRotatedBadURLNeverShown(t *testing.T) {
	pw := secret(t)
	u, err := url.Parse(brokertest.URL())
	if err != nil {
		t.Fatal(err)
	}
	urlFile := filepath.Join(t.TempDir(), "url")
	install(t, urlFile, []byte(u.String()+"\n"))
	q := brokertest.Queue(t)
	name := brokertest.Name(t)
	p := startWarren(t, []string{"WARREN_AMQP_URL_FILE=" + urlFile, "WARREN_QUEUE=" + q,
		"WARREN_CONNECTION_NAME=" + name, "WARREN_LOG_LEVEL=debug"})
	p.waitStatus(t, "/readyz", http.StatusOK)
	outputs := map[string]string{}
	// Each step's reason differs from the last, so that /readyz shows
	// when warren has read the new file.
	for i, tt := range []struct {
		give string // what the password holds
		want string // what /readyz says
	}{
		{`"`, "the user or password holds a character that must be percent-encoded"},
		{"\t", "a control character"},
		{`\`, "the user or password holds a character that must be percent-encoded"},
		{"#", "an @ after the host"},
		{",", "URL 1 of 2 does not parse: bad port"},
		{"/", "an @ after the host"},
	} {
		half := len(pw) / 2
		bad := fmt.Sprintf("%s://%s:%s%s%s@%s%s", u.Scheme, u.User.Username(), pw[:half], tt.give, pw[half:], u.Host, u.Path)
		install(t, urlFile, []byte(bad+"\n"))
		if i == 0 {
			if n := brokertest.CloseConnections(t, name); n != 1 {
				t.Fatalf("broker closed %d connections named %q, want 1", n, name)
			}
		}
		var body string
		brokertest.WaitFor(t, 20*time.Second, fmt.Sprintf("/readyz saying %q", tt.want), func() bool {
			_, body = p.status("/readyz")
			return strings.Contains(body, "WARREN_AMQP_URL_FILE") && strings.Contains(body, tt.want) &&
				(i == 0 || body != outputs[fmt.Sprintf("/readyz %d", i-1)])
		})
		outputs[fmt.Sprintf("/readyz %d", i)] = body
	}
	install(t, urlFile, []byte(u.String()+"\n"))
	p.waitStatus(t, "/readyz", http.StatusOK)
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("warren exited %d after SIGTERM, want 0", code)
	}
	outputs["log"] = p.out.String()
	var pieces []string
	for i := 0; i+4 <= len(pw); i++ {
		pieces = append(pieces, pw[i:i+4])
	}
	noSecret(t, outputs, pieces...)
}
