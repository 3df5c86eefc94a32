package broker_test

import (
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

// FuzzHeaders feeds arbitrary header tables, and arbitrary values of
// x-warren-attempts and x-warren-retry-at, to the functions that read
// warren's headers: they must never panic and always give a defined
// outcome.
func FuzzHeaders(f *testing.F) {
	f.Add([]byte{}, uint8(0), []byte{})
	f.Add([]byte{3, 1, 'a', 12, 1, 'b'}, uint8(8), []byte("\xff\xff\xff\xff\xff\xff\xff\x7f"))         // int64 max
	f.Add([]byte{1, 1, 'x', 15, 2, 1, 'y', 15}, uint8(10), []byte("\x00\x00\x00\x00\x00\x00\xf8\x7f")) // NaN
	f.Add([]byte{}, uint8(12), []byte("\x05-3"))                                                       // "-3"
	f.Add([]byte{}, uint8(12), []byte("\x0399999999999999999999"))
	f.Add([]byte{}, uint8(10), []byte("\x00\x00\x00\x00\x00\x00\xf0\xff")) // -Inf
	f.Fuzz(func(t *testing.T, table []byte, kind uint8, value []byte) {
		r := brokertest.NewTableReader(table)
		h := r.Table(64)
		v := brokertest.NewTableReader(append([]byte{kind}, value...)).Value(64)
		h[broker.HeaderAttempts] = v
		h[broker.HeaderRetryAt] = v

		n := broker.Attempts(h)
		if n < 0 || n > math.MaxInt32 {
			t.Fatalf("Attempts(%#v) = %d, want 0 to MaxInt32", v, n)
		}
		switch x := v.(type) {
		case int8, int16, int32, uint8, uint16, uint32:
			if want := min(reflect.ValueOf(x).Convert(reflect.TypeFor[int64]()).Int(), math.MaxInt32); want >= 0 && int64(n) != want {
				t.Fatalf("Attempts(%T %v) = %d, want %d", x, x, n, want)
			}
		case int64:
			if x >= 0 && x <= math.MaxInt32 && int64(n) != x {
				t.Fatalf("Attempts(int64 %d) = %d, want it", x, n)
			}
		}
		if at, ok := broker.RetryAt(h); ok {
			if ms, isInt := v.(int64); !isInt || ms <= 0 || !at.Equal(time.UnixMilli(ms)) {
				t.Fatalf("RetryAt(%#v) = %v, true; want a time only from a positive int64", v, at)
			}
		}

		d := &amqp.Delivery{Headers: h, Exchange: r.String(), RoutingKey: r.String(), Expiration: "60000",
			UserId: "someone", Body: r.Bytes(64)}
		before := cloneTable(h)
		c := broker.CopyOf(d)
		if !same(d.Headers, before) {
			t.Fatalf("CopyOf changed the delivery's headers")
		}
		if _, ok := c.Headers[broker.HeaderPublishID]; ok {
			t.Fatalf("CopyOf kept the publish token of the delivery")
		}
		for k, v := range h {
			if k == broker.HeaderPublishID {
				continue
			}
			if !same(c.Headers[k], v) {
				t.Fatalf("CopyOf lost header %q: %#v, want %#v", k, c.Headers[k], v)
			}
		}
		if _, ok := c.Headers[broker.HeaderRoutingKey]; !ok {
			t.Fatalf("CopyOf gave no %s header", broker.HeaderRoutingKey)
		}
		if c.DeliveryMode != amqp.Persistent || c.Expiration != "" || c.UserId != "" {
			t.Fatalf("CopyOf = mode %d, expiration %q, user %q; want persistent, neither", c.DeliveryMode, c.Expiration, c.UserId)
		}
		if h.Validate() == nil {
			if err := c.Headers.Validate(); err != nil {
				t.Fatalf("CopyOf of valid headers = headers the library refuses to send: %v", err)
			}
		}
		c.Headers["added"] = "x" // the copy's table is its own
		if _, ok := d.Headers["added"]; ok {
			t.Fatalf("CopyOf shares its headers with the delivery")
		}
	})
}

// same reports whether a and b hold the same values; unlike
// reflect.DeepEqual, a NaN is the same as itself. fmt prints maps sorted.
func same(a, b any) bool {
	return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

// cloneTable copies the top level of h, which is what CopyOf may change.
func cloneTable(h amqp.Table) amqp.Table {
	c := make(amqp.Table, len(h))
	for k, v := range h {
		c[k] = v
	}
	return c
}

// TestCopyOfOrigin: a copy remembers how the message was first published,
// as warren first received it, and later hops keep that. An x-death header
// says nothing about it: it may come from another system's dead-lettering
// before the message ever reached warren's queue.
func TestCopyOfOrigin(t *testing.T) {
	retried := amqp.Table{"x-death": []any{amqp.Table{"queue": "q.retry.1s", "reason": "expired",
		"exchange": "", "routing-keys": []any{"q.retry.1s"}}}}
	for _, tt := range []struct {
		name       string
		give       amqp.Table
		exchange   string
		key        string
		wantRK     string
		wantExchng string
	}{
		{"plain", nil, "ex", "rk", "rk", "ex"},
		{"kept from an earlier copy", amqp.Table{broker.HeaderRoutingKey: "first", broker.HeaderExchange: "ex0"}, "ex", "rk", "first", "ex0"},
		{"foreign x-death ignored", amqp.Table{"x-death": []any{amqp.Table{"exchange": "orig", "routing-keys": []any{"orig-rk"}}}}, "ex", "rk", "rk", "ex"},
		{"foreign x-death on a later hop", amqp.Table{broker.HeaderRoutingKey: "rk", broker.HeaderExchange: "ex",
			"x-death": []any{amqp.Table{"exchange": "orig", "routing-keys": []any{"orig-rk"}}}}, "", "q", "rk", "ex"},
		{"back from warren's retry queue", withHeaders(retried, broker.HeaderRoutingKey, "orders.new", broker.HeaderExchange, "orders"), "", "q", "orders.new", "orders"},
		{"x-death not a list", amqp.Table{"x-death": "garbage"}, "ex", "rk", "rk", "ex"},
		{"x-death empty", amqp.Table{"x-death": []any{}}, "ex", "rk", "rk", "ex"},
		{"x-death entry not a table", amqp.Table{"x-death": []any{int32(1)}}, "ex", "rk", "rk", "ex"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := broker.CopyOf(&amqp.Delivery{Headers: tt.give, Exchange: tt.exchange, RoutingKey: tt.key})
			if rk, ex := c.Headers[broker.HeaderRoutingKey], c.Headers[broker.HeaderExchange]; rk != tt.wantRK || ex != tt.wantExchng {
				t.Errorf("CopyOf(%v) origin = %v, %v; want %q, %q", tt.give, ex, rk, tt.wantExchng, tt.wantRK)
			}
		})
	}
}

func withHeaders(h amqp.Table, kv ...string) amqp.Table {
	c := cloneTable(h)
	for i := 0; i+1 < len(kv); i += 2 {
		c[kv[i]] = kv[i+1]
	}
	return c
}

// TestCopyOfDropsPublishToken: the token of the publish that brought a
// message belongs to that publish only; a copy starts without one.
func TestCopyOfDropsPublishToken(t *testing.T) {
	c := broker.CopyOf(&amqp.Delivery{Headers: amqp.Table{broker.HeaderPublishID: "earlier-hop", "k": "v"}})
	if tok, ok := c.Headers[broker.HeaderPublishID]; ok || c.Headers["k"] != "v" {
		t.Errorf("CopyOf headers = %v (token %v); want the token gone, the rest kept", c.Headers, tok)
	}
}

// TestCopyOfSharesTheBody: a retry or dead copy publishes the delivery's
// own body, never a second copy of it: a 100 MB message must not cost
// another 100 MB to retry.
func TestCopyOfSharesTheBody(t *testing.T) {
	body := make([]byte, 1<<20)
	c := broker.CopyOf(&amqp.Delivery{Body: body})
	if len(c.Body) != len(body) || &c.Body[0] != &body[0] {
		t.Errorf("CopyOf's body is a copy (%d bytes at %p, delivery's at %p), want the delivery's own", len(c.Body), &c.Body[0], &body[0])
	}
}

func TestAttempts(t *testing.T) {
	for _, tt := range []struct {
		give any
		want int
	}{
		{nil, 0},
		{int64(3), 3},
		{int32(4), 4},
		{int8(-1), 0},
		{int64(-5), 0},
		{int64(math.MaxInt64), math.MaxInt32},
		{uint32(math.MaxUint32), math.MaxInt32},
		{"7", 7},
		{" 7 ", 7},
		{"seven", 0},
		{"-2", 0},
		{"99999999999999999999", math.MaxInt32}, // out of range: as many as can be
		{2.9, 2},
		{float32(1e30), math.MaxInt32},
		{math.NaN(), 0},
		{math.Inf(-1), 0},
		{math.Inf(1), math.MaxInt32},
		{true, 0},
		{[]byte("3"), 0},
		{amqp.Table{"n": int64(3)}, 0},
		{amqp.Decimal{Scale: 0, Value: 3}, 0},
	} {
		if got := broker.Attempts(amqp.Table{broker.HeaderAttempts: tt.give}); got != tt.want {
			t.Errorf("Attempts(%T %v) = %d, want %d", tt.give, tt.give, got, tt.want)
		}
	}
	if got := broker.Attempts(nil); got != 0 {
		t.Errorf("Attempts(nil) = %d, want 0", got)
	}
}

func TestRetryAt(t *testing.T) {
	for _, tt := range []struct {
		give   any
		want   time.Time
		wantOK bool
	}{
		{int64(1700000000000), time.UnixMilli(1700000000000), true},
		{int64(math.MaxInt64), time.UnixMilli(math.MaxInt64), true},
		{int64(0), time.Time{}, false},
		{int64(-1), time.Time{}, false},
		{int32(5), time.Time{}, false},
		{"1700000000000", time.Time{}, false},
		{1.7e12, time.Time{}, false},
		{nil, time.Time{}, false},
	} {
		got, ok := broker.RetryAt(amqp.Table{broker.HeaderRetryAt: tt.give})
		if ok != tt.wantOK || !got.Equal(tt.want) {
			t.Errorf("RetryAt(%T %v) = %v, %v; want %v, %v", tt.give, tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}
