package deadletter

import (
	"math"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
)

func TestEntryOf(t *testing.T) {
	died := time.Date(2026, 11, 27, 14, 33, 42, 0, time.UTC)
	for _, tt := range []struct {
		name string
		give amqp.Table
		want Entry
	}{
		{
			name: "dead-lettered by warren",
			give: amqp.Table{broker.HeaderReason: "post: status 503", broker.HeaderAttempts: int64(5),
				broker.HeaderDiedAt: died, broker.HeaderRoutingKey: "orders"},
			want: Entry{Reason: "post: status 503", Attempts: 5, DiedAt: died, RoutingKey: "orders"},
		},
		{
			name: "dead-lettered by the broker",
			give: amqp.Table{"x-death": []any{amqp.Table{"reason": "delivery_limit", "time": died}}},
			want: Entry{Reason: "broker: delivery_limit", DiedAt: died, RoutingKey: "rk"},
		},
		{
			name: "headers of the wrong types",
			give: amqp.Table{broker.HeaderReason: int32(7), broker.HeaderAttempts: "many", broker.HeaderDiedAt: "yesterday",
				broker.HeaderRoutingKey: []byte("orders"), "x-death": "garbage"},
			want: Entry{RoutingKey: "rk"},
		},
		{
			name: "x-death of the wrong shapes",
			give: amqp.Table{"x-death": []any{"not a table", amqp.Table{"reason": int64(1)}}},
			want: Entry{RoutingKey: "rk"},
		},
		{
			name: "attempts out of range",
			give: amqp.Table{broker.HeaderAttempts: math.Inf(1)},
			want: Entry{Attempts: math.MaxInt32, RoutingKey: "rk"},
		},
		{name: "no headers", want: Entry{RoutingKey: "rk"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := entryOf(&amqp.Delivery{Headers: tt.give, RoutingKey: "rk"})
			if got.Reason != tt.want.Reason || got.Attempts != tt.want.Attempts || !got.DiedAt.Equal(tt.want.DiedAt) || got.RoutingKey != tt.want.RoutingKey {
				t.Errorf("entryOf(%v) = reason %q, attempts %d, died %v, key %q; want %q, %d, %v, %q", tt.give,
					got.Reason, got.Attempts, got.DiedAt, got.RoutingKey, tt.want.Reason, tt.want.Attempts, tt.want.DiedAt, tt.want.RoutingKey)
			}
		})
	}
}

// FuzzEntryOf reads arbitrary dead messages: never a panic, and an entry
// whose fields come from headers of the right type, or are empty.
func FuzzEntryOf(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{2, 16, 'x', '-', 'w', 'a', 'r', 'r', 'e', 'n', '-', 'r', 'e', 'a', 's', 'o', 'n', 12, 3, 'a', 'b', 'c'})
	f.Add([]byte{1, 7, 'x', '-', 'd', 'e', 'a', 't', 'h', 16, 2, 15, 1, 6, 'r', 'e', 'a', 's', 'o', 'n', 12, 1, 'z'})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := brokertest.NewTableReader(b)
		h := r.Table(32)
		e := entryOf(&amqp.Delivery{Headers: h, RoutingKey: "rk", MessageId: "m", Body: []byte("body")})
		if e.Attempts != broker.Attempts(h) {
			t.Fatalf("entryOf(%v).Attempts = %d, want %d", h, e.Attempts, broker.Attempts(h))
		}
		if rk, ok := h[broker.HeaderRoutingKey].(string); ok && e.RoutingKey != rk || !ok && e.RoutingKey != "rk" {
			t.Fatalf("entryOf(%v).RoutingKey = %q", h, e.RoutingKey)
		}
		if reason, ok := h[broker.HeaderReason].(string); ok && reason != "" && e.Reason != reason {
			t.Fatalf("entryOf(%v).Reason = %q, want %q", h, e.Reason, reason)
		}
		if e.MessageID != "m" || string(e.Body) != "body" {
			t.Fatalf("entryOf lost the message id or body: %q, %q", e.MessageID, e.Body)
		}
	})
}
