package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// broker is a RabbitMQ node as the test uses it (the machine's, or one of
// the test's own): a user and vhost of the test's own (RabbitMQ refuses
// guest from anything but loopback), reached by the pods through a
// forwarder on the pod network's gateway.
type broker struct {
	user, password, vhost string
	local                 string // the broker's address on loopback
	// ctl runs rabbitmqctl against the broker, failing the test if it
	// fails; cleanup too, reporting a failure only.
	ctl, cleanup func(t testing.TB, args ...string) string
	// own: a node of the test's own, which it may stop; never the
	// machine's broker, which others use.
	own bool
}

// newBroker creates the user and vhost on the machine's broker, and
// removes them in t.Cleanup.
func newBroker(t *testing.T, local string) *broker {
	t.Helper()
	return newBrokerWith(t, local, ctl, ctlCleanup)
}

// newBrokerWith is newBroker on the broker at local that ctl and cleanup
// manage.
func newBrokerWith(t *testing.T, local string, ctl, cleanup func(testing.TB, ...string) string) *broker {
	t.Helper()
	id := randomHex(4)
	b := &broker{user: "warren-e2e-" + id, password: randomHex(12), vhost: "warren-e2e-" + id, local: local, ctl: ctl, cleanup: cleanup}
	b.ctl(t, "add_vhost", b.vhost)
	t.Cleanup(func() { b.cleanup(t, "delete_vhost", b.vhost) })
	b.ctl(t, "add_user", b.user, b.password)
	t.Cleanup(func() { b.cleanup(t, "delete_user", b.user) })
	b.ctl(t, "set_permissions", "-p", b.vhost, b.user, ".*", ".*", ".*")
	return b
}

// url is the broker's URL through addr (host:port).
func (b *broker) url(addr string) string {
	return fmt.Sprintf("amqp://%s:%s@%s/%s", b.user, b.password, addr, b.vhost)
}

// queueCounts returns a queue's ready and unacknowledged messages.
func (b *broker) queueCounts(t *testing.T, queue string) (ready, unacked int) {
	t.Helper()
	out := b.ctl(t, "list_queues", "-q", "--no-table-headers", "-p", b.vhost, "name", "messages_ready", "messages_unacknowledged")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == queue {
			ready, _ = strconv.Atoi(f[1])
			unacked, _ = strconv.Atoi(f[2])
			return ready, unacked
		}
	}
	t.Fatalf("queue %s not found in vhost %s:\n%s", queue, b.vhost, out)
	return 0, 0
}

// connectionNames returns the connection_name of every client connection
// to the test's vhost, sorted.
func (b *broker) connectionNames(t *testing.T) []string {
	t.Helper()
	code := fmt.Sprintf(`lists:foreach(fun(C) ->
		try rabbit_reader:info(C, [vhost, client_properties]) of
			[{vhost, <<%q>>}, {client_properties, P}] ->
				case lists:keyfind(<<"connection_name">>, 1, P) of
					{_, longstr, N} -> io:format("name=~s~n", [N]);
					_ -> ok
				end;
			_ -> ok
		catch _:_ -> ok end
	end, rabbit_networking:connections()).`, b.vhost)
	var names []string
	for _, line := range strings.Split(b.ctl(t, "eval", code), "\n") {
		if n, ok := strings.CutPrefix(strings.TrimSpace(line), "name="); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := runCtl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctlCleanup is ctl for cleanups: a failure is reported, and the other
// cleanups still run.
func ctlCleanup(t testing.TB, args ...string) string {
	t.Helper()
	out, err := runCtl(args...)
	if err != nil {
		t.Error(err)
	}
	return out
}

func runCtl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// forwarder relays TCP connections from a listening address (on the pod
// network's gateway) to the broker on loopback, which listens there only.
type forwarder struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
}

// forward listens on addr and relays to target until t ends.
func forward(t *testing.T, addr, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("forwarder: %v", err)
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.accept()
	}()
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

func (f *forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // closed
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.relay(c)
		}()
	}
}

// relay copies both ways until either side closes, then closes both.
func (f *forwarder) relay(c net.Conn) {
	defer f.untrack(c)
	defer c.Close()
	up, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		return // the broker is down: the client sees its connection closed
	}
	if !f.track(up) {
		up.Close()
		return
	}
	defer f.untrack(up)
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(up, c)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, up)
		done <- struct{}{}
	}()
	<-done
	c.Close()
	up.Close()
	<-done
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = true
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	f.wg.Wait()
}
