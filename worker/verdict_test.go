package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
)

func TestVerdict(t *testing.T) {
	w := &Worker{cfg: Config{MaxAttempts: 3, MaxRetryAfter: time.Minute}}
	boom := errors.New("boom")
	for _, tt := range []struct {
		name     string
		attempts int // before this one
		give     Outcome
		err      error
		want     Outcome
		wantWhy  string // in the reason
	}{
		{name: "ack", give: Ack, want: Ack},
		{name: "first failure", give: Retry, err: boom, want: Retry},
		{name: "last attempt", attempts: 2, give: Retry, err: boom, want: Dead, wantWhy: "failed 3 attempts, the most allowed; last: boom"},
		{name: "permanent", give: Dead, err: Permanent(boom), want: Dead, wantWhy: "boom"},
		{name: "Retry-After at the ceiling", give: Retry, err: RetryAfter(boom, time.Minute), want: Retry},
		{name: "Retry-After above the ceiling", give: Retry, err: RetryAfter(boom, time.Hour), want: Dead,
			wantWhy: "Retry-After 1h0m0s exceeds WARREN_MAX_RETRY_AFTER (1m0s); last: boom"},
		{name: "requeue at shutdown", give: Requeue, err: boom, want: Requeue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &amqp.Delivery{Headers: amqp.Table{broker.HeaderAttempts: int64(tt.attempts)}}
			f := w.verdict(d, tt.give, tt.err)
			if f.outcome != tt.want || !strings.Contains(f.why, tt.wantWhy) || (tt.wantWhy == "") != (f.why == "") || f.attempt != tt.attempts+1 {
				t.Errorf("verdict(%v, %v) = %v, %q, attempt %d, want %v, %q, attempt %d",
					tt.give, tt.err, f.outcome, f.why, f.attempt, tt.want, tt.wantWhy, tt.attempts+1)
			}
		})
	}
}
