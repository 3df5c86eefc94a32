package deadletter

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

// TestReplayCopyOrigin: a replayed message shows its handler how it was
// first published: from warren's own headers, or, for a message the broker
// dead-lettered from the queue itself, from the broker's record of that;
// never from another system's x-death.
func TestReplayCopyOrigin(t *testing.T) {
	const q = "orders"
	for _, tt := range []struct {
		name       string
		give       amqp.Table
		wantExchng string
		wantRK     string
	}{
		{
			name: "dead-lettered by warren",
			give: amqp.Table{broker.HeaderExchange: "shop", broker.HeaderRoutingKey: "order.new", broker.HeaderAttempts: int64(5),
				"x-death": []any{amqp.Table{"queue": "elsewhere", "exchange": "foreign", "routing-keys": []any{"foreign.key"}}}},
			wantExchng: "shop", wantRK: "order.new",
		},
		{
			name: "delivery limit of the queue",
			give: amqp.Table{"x-death": []any{
				amqp.Table{"queue": q, "reason": "delivery_limit", "exchange": "shop", "routing-keys": []any{"order.new"}},
				amqp.Table{"queue": "elsewhere", "exchange": "foreign", "routing-keys": []any{"foreign.key"}},
			}},
			wantExchng: "shop", wantRK: "order.new",
		},
		{
			name:       "another system's x-death only",
			give:       amqp.Table{"x-death": []any{amqp.Table{"queue": "elsewhere", "exchange": "foreign", "routing-keys": []any{"foreign.key"}}}},
			wantExchng: "", wantRK: q + ".dead",
		},
		{
			name:       "x-death of the wrong shape",
			give:       amqp.Table{"x-death": []any{amqp.Table{"queue": q, "exchange": int32(1), "routing-keys": "x"}}},
			wantExchng: "", wantRK: q + ".dead",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &amqp.Delivery{Headers: tt.give, Exchange: "", RoutingKey: q + ".dead"}
			msg := replayCopy(d, q)
			if ex, rk := msg.Headers[broker.HeaderExchange], msg.Headers[broker.HeaderRoutingKey]; ex != tt.wantExchng || rk != tt.wantRK {
				t.Errorf("replayCopy(%v) origin = %v, %v; want %q, %q", tt.give, ex, rk, tt.wantExchng, tt.wantRK)
			}
			for _, h := range []string{broker.HeaderAttempts, "x-death"} {
				if _, ok := msg.Headers[h]; ok {
					t.Errorf("replayCopy kept %s", h)
				}
			}
			if d.Exchange != "" || d.RoutingKey != q+".dead" {
				t.Errorf("replayCopy changed the delivery")
			}
		})
	}
}
