package broker_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/config"
	"github.com/warren-mq/warren/internal/warrentest"
)

// urlOutputs returns every text warren makes of a URL file holding raw: the
// error of a Dialer that reads it, and the error of the configuration that
// names it. Both reach the log, and the first the unauthenticated /readyz.
func urlOutputs(t testing.TB, dir, raw string) map[string]string {
	t.Helper()
	file := filepath.Join(dir, "url")
	if err := os.WriteFile(file, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &broker.Dialer{URLFile: file}
	if conn, _, err := d.Dial(ctx); err != nil {
		out["dial error"] = err.Error()
	} else {
		conn.Close()
	}
	for _, kv := range [][2]string{{"WARREN_QUEUE", "q"}, {"WARREN_AMQP_URL_FILE", file}} {
		if err := os.Setenv(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := config.Load(); err != nil {
		out["configuration error"] = err.Error()
	}
	return out
}

// FuzzURLPasswordNeverShown writes a URL file whose password is any bytes
// at all, as a rotated Secret may hold, and checks every text warren makes
// of it: neither the password nor any piece of it of 4 bytes or more may
// show. What the texts hold for a harmless password (the host, the
// reasons) is no leak.
func FuzzURLPasswordNeverShown(f *testing.F) {
	for _, pw := range []string{
		`Tr0ub"4dor&3`, `back\slash-secret`, "tab\tin-secret", "hash#in-secret", "slash/in-secret",
		"12/34/secret", "comma,in-secret", "1234,5678", "percent%zzsecret", "colon:in:secret",
		"at@in@secret", "question?secret", "bracket]secret[", "space in secret", "newline\nsecret",
		"amqp://user:pw", "\x00\x01\xff\xfe-secret", "99999", "p", "",
	} {
		f.Add([]byte(pw))
	}
	// Nobody listens there: a dial is refused at once.
	addr, err := warrentest.FreeAddr()
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	for _, name := range []string{"WARREN_QUEUE", "WARREN_AMQP_URL", "WARREN_AMQP_URL_FILE"} {
		if old, ok := os.LookupEnv(name); ok {
			f.Cleanup(func() { os.Setenv(name, old) })
		}
		os.Unsetenv(name)
	}
	f.Cleanup(func() { os.Unsetenv("WARREN_QUEUE"); os.Unsetenv("WARREN_AMQP_URL_FILE") })
	build := func(pw string) string { return "amqp://warren:" + pw + "@" + addr + "/vhost\n" }
	// What the outputs say of harmless URLs: the words of every reason.
	var vocabulary strings.Builder
	for _, raw := range []string{build("p"), "x", "ftp://h/", "amqp://h:x/", "amqp://h:99999/", "amqp://u:%zz@h/",
		"amqp://u:a\tb@h/", `amqp://u:a"b@h/`, "amqp://u:1/a@h/", "amqp://[::1/", "amqp://u:p@h/,x"} {
		for _, text := range urlOutputs(f, dir, raw) {
			vocabulary.WriteString(text + "\n")
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pw := string(b)
		for what, text := range urlOutputs(t, dir, build(pw)) {
			for i := 0; i+4 <= len(pw); i++ {
				if piece := pw[i : i+4]; strings.Contains(text, piece) && !strings.Contains(vocabulary.String(), piece) {
					t.Fatalf("password %q: its piece %q shown in the %s: %q", pw, piece, what, text)
				}
			}
		}
	})
}
