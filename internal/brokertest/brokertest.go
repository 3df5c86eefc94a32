// Package brokertest gives integration tests a real RabbitMQ broker:
// uniquely named queues that are deleted after the test, publishing,
// counting, faults injected through the broker itself, and a TCP proxy that
// cuts links.
package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker tests use when WARREN_TEST_AMQP_URL is unset.
const DefaultURL = "amqp://guest:guest@localhost:5672/"

// URL returns the broker URL for tests.
func URL() string {
	if u := os.Getenv("WARREN_TEST_AMQP_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// Dial connects to the test broker, failing the test with a hint when no
// broker answers. The connection is closed when the test ends.
func Dial(t testing.TB) *amqp.Connection {
	t.Helper()
	return DialTo(t, URL())
}

// DialTo connects to the broker at url (a node of the test's own, say);
// the connection is closed when the test ends.
func DialTo(t testing.TB, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial test broker (start one with `make broker`, or set WARREN_TEST_AMQP_URL): %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Channel opens a channel on a new connection to the test broker.
func Channel(t testing.TB) *amqp.Channel {
	t.Helper()
	ch, err := Dial(t).Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	return ch
}

// Name returns a name unique to this test run, for queues, exchanges and
// connections.
func Name(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	if len(name) > 80 {
		name = name[:80]
	}
	return "warren-test." + name + "." + hex.EncodeToString(b[:])
}

// Queue returns a unique queue name and deletes that queue, and the
// queues warren names after it, when the test ends. It does not declare it.
func Queue(t testing.TB) string {
	t.Helper()
	q := Name(t)
	// The retry queues of warren's default delays go too; a test with
	// other delays deletes its own with DeleteAfter.
	DeleteAfter(t, q, q+".dead", q+".retry.1s", q+".retry.10s", q+".retry.1m")
	return q
}

// DeleteAfter deletes the named queues when the test ends.
func DeleteAfter(t testing.TB, names ...string) {
	t.Cleanup(func() { DeleteQueues(t, names...) })
}

// DeleteQueues deletes the named queues, ignoring those that do not exist.
func DeleteQueues(t testing.TB, names ...string) {
	t.Helper()
	At(URL()).DeleteQueues(t, names...)
}

// DeclareQueue declares a durable queue with args.
func DeclareQueue(t testing.TB, name string, args amqp.Table) {
	t.Helper()
	At(URL()).Declare(t, name, args)
}

// Publish publishes bodies to the default exchange with routing key
// queue, persistent and confirmed.
func Publish(t testing.TB, queue string, bodies ...string) {
	t.Helper()
	PublishTo(t, "", queue, bodies...)
}

// PublishTo publishes bodies to exchange with key, persistent and
// confirmed; it fails the test if the broker does not confirm them all.
func PublishTo(t testing.TB, exchange, key string, bodies ...string) {
	t.Helper()
	PublishOn(t, Channel(t), exchange, key, bodies...)
}

// PublishOn publishes bodies on ch, a channel to any broker, to exchange
// with key, persistent and confirmed; it fails the test if the broker
// does not confirm them all.
func PublishOn(t testing.TB, ch *amqp.Channel, exchange, key string, bodies ...string) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx := context.Background()
	dcs := make([]*amqp.DeferredConfirmation, 0, len(bodies))
	for _, b := range bodies {
		id := b // a message id is a short string
		if len(id) > 255 {
			id = id[:255]
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "text/plain",
			MessageId:    id,
			Body:         []byte(b),
		})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if !dc.Wait() {
			t.Fatalf("publish: broker did not confirm")
		}
	}
}

// Bodies returns n distinct bodies with prefix.
func Bodies(prefix string, n int) []string {
	bs := make([]string, n)
	for i := range bs {
		bs[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return bs
}

// Counts returns the ready and unacked message counts of queue, and its
// consumer count, as the broker reports them.
func Counts(t testing.TB, queue string) (ready, unacked, consumers int) {
	t.Helper()
	out := Ctl(t, "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers", "--formatter", "json", "-q")
	var rows []struct {
		Name      string `json:"name"`
		Ready     int    `json:"messages_ready"`
		Unacked   int    `json:"messages_unacknowledged"`
		Consumers int    `json:"consumers"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	for _, r := range rows {
		if r.Name == queue {
			return r.Ready, r.Unacked, r.Consumers
		}
	}
	return 0, 0, 0
}

// Ready returns the number of ready messages in queue, read with a passive
// declaration; it needs no rabbitmqctl.
func Ready(t testing.TB, queue string) int {
	t.Helper()
	return At(URL()).Ready(t, queue)
}

// CanCtl reports whether rabbitmqctl can manage the test broker: it must
// be installed and the broker local. It says why not otherwise.
func CanCtl() (bool, string) {
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		return false, "rabbitmqctl not installed"
	}
	if u := os.Getenv("WARREN_TEST_AMQP_URL"); u != "" && !strings.Contains(u, "@localhost") && !strings.Contains(u, "@127.0.0.1") {
		return false, "the test broker is not local: rabbitmqctl cannot reach it"
	}
	return true, ""
}

// NeedCtl skips the test unless CanCtl.
func NeedCtl(t testing.TB) {
	t.Helper()
	if ok, why := CanCtl(); !ok {
		t.Skip(why + ": this test injects faults or reads the broker through it")
	}
}

// Ctl runs rabbitmqctl with args and returns its output.
func Ctl(t testing.TB, args ...string) string {
	t.Helper()
	NeedCtl(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// eval runs Erlang code in the broker, with the connection name bound to
// Name, and returns what it printed.
func eval(t testing.TB, connName, code string) string {
	t.Helper()
	return Ctl(t, "eval", fmt.Sprintf("Name = <<%q>>, %s", connName, code))
}

// connectionsNamed is an Erlang list of the pids of the connections whose
// client gave the connection name Name.
// Connections that close meanwhile, or have no client properties yet,
// are skipped rather than failing the whole call.
const connectionsNamed = `[C || C <- rabbit_networking:connections(),
	begin Ps = try rabbit_reader:info(C, [client_properties]) of
			[{client_properties, P}] when is_list(P) -> P;
			_ -> []
		catch _:_ -> [] end,
	lists:keyfind(<<"connection_name">>, 1, Ps) =:= {<<"connection_name">>, longstr, Name} end]`

// CloseConnections makes the broker close every connection named name
// (the client property connection_name) with CONNECTION_FORCED, as
// rabbitmqctl close_connection does, and returns how many it closed.
func CloseConnections(t testing.TB, name string) int {
	t.Helper()
	out := eval(t, name, `Cs = `+connectionsNamed+`,
		[rabbit_networking:close_connection(C, "closed by warren test") || C <- Cs], length(Cs).`)
	var n int
	fmt.Sscan(strings.TrimSpace(out), &n)
	return n
}

// FailChannels makes the broker close the channels of the connections
// named name with a channel error (406 PRECONDITION_FAILED, unknown
// delivery tag), as if the client had acked a tag it never received. The
// connection stays open. It returns how many channels it failed.
func FailChannels(t testing.TB, name string) int {
	t.Helper()
	out := eval(t, name, `Cs = `+connectionsNamed+`,
		Chs = [Ch || Ch <- rabbit_channel:list(), begin Conn = try rabbit_channel:info(Ch, [connection]) of
				[{connection, C}] -> C; _ -> none catch _:_ -> none end, lists:member(Conn, Cs) end],
		[rabbit_channel:do(Ch, {'basic.ack', 4294967295, false}) || Ch <- Chs], length(Chs).`)
	var n int
	fmt.Sscan(strings.TrimSpace(out), &n)
	return n
}

// Connections returns how many connections named name the broker has.
func Connections(t testing.TB, name string) int {
	t.Helper()
	out := eval(t, name, `length(`+connectionsNamed+`).`)
	var n int
	fmt.Sscan(strings.TrimSpace(out), &n)
	return n
}

// WaitFor polls cond until it holds or timeout passes, then fails the
// test with what.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// QueueArgs returns the arguments the broker holds for queue, as
// rabbitmqctl list_queues prints them.
func QueueArgs(t testing.TB, queue string) map[string]any {
	t.Helper()
	out := Ctl(t, "list_queues", "name", "arguments", "--formatter", "json", "-q")
	var rows []struct {
		Name      string  `json:"name"`
		Arguments [][]any `json:"arguments"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	for _, r := range rows {
		if r.Name != queue {
			continue
		}
		args := make(map[string]any)
		for _, a := range r.Arguments {
			// [name, type, value]
			if len(a) == 3 {
				if k, ok := a[0].(string); ok {
					args[k] = a[2]
				}
			}
		}
		return args
	}
	t.Fatalf("queue %q not found", queue)
	return nil
}

// Get takes up to n messages from queue and acks them, for a test to read
// what warren left there.
func Get(t testing.TB, queue string, n int) []amqp.Delivery {
	t.Helper()
	return GetOn(t, Channel(t), queue, n)
}

// GetOn takes up to n messages from queue on ch, a channel to any broker,
// and acks them; n < 0 takes them all.
func GetOn(t testing.TB, ch *amqp.Channel, queue string, n int) []amqp.Delivery {
	t.Helper()
	var ds []amqp.Delivery
	for n < 0 || len(ds) < n {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get from %q: %v", queue, err)
		}
		if !ok {
			break
		}
		ds = append(ds, d)
	}
	return ds
}
