package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestOutcomeOf(t *testing.T) {
	e := errors.New("boom")
	for _, tt := range []struct {
		give error
		want Outcome
	}{
		{nil, Ack},
		{e, Retry},
		{Permanent(e), Dead},
		{fmt.Errorf("x: %w", Permanent(e)), Dead},
		{errors.Join(e, Permanent(e)), Dead},
		{RetryAfter(e, time.Second), Retry},
		{RetryAfter(Permanent(e), time.Second), Dead},
		{context.DeadlineExceeded, Retry},
		{context.Canceled, Retry},
		{fmt.Errorf("post: %w", context.DeadlineExceeded), Retry},
	} {
		if got := OutcomeOf(tt.give); got != tt.want {
			t.Errorf("OutcomeOf(%v) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

func TestPermanent(t *testing.T) {
	if err := Permanent(nil); err != nil {
		t.Errorf("Permanent(nil) = %v, want nil", err)
	}
	if IsPermanent(nil) {
		t.Errorf("IsPermanent(nil) = true, want false")
	}
	e := errors.New("cannot parse")
	p := Permanent(e)
	if !errors.Is(p, e) {
		t.Errorf("errors.Is(Permanent(%v), %v) = false, want true: the cause must stay visible", e, e)
	}
	if p.Error() != e.Error() {
		t.Errorf("Permanent(%q).Error() = %q, want the text unchanged", e, p.Error())
	}
	if err := RetryAfter(nil, time.Second); err != nil {
		t.Errorf("RetryAfter(nil, 1s) = %v, want nil", err)
	}
}

func TestOutcomeString(t *testing.T) {
	for _, tt := range []struct {
		give Outcome
		want string
	}{
		{Ack, "ack"},
		{Retry, "retry"},
		{Dead, "dead"},
		{Requeue, "requeue"},
		{numOutcomes, "unknown"},
		{Outcome(-1), "unknown"},
	} {
		if got := tt.give.String(); got != tt.want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(tt.give), got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	const min, max = 100 * time.Millisecond, 3 * time.Second
	b := backoff{min: min, max: max}
	for round := range 2 {
		prev := time.Duration(0)
		for i := range 40 {
			ceiling := max
			if i < 30 && min<<i < max {
				ceiling = min << i
			}
			d := b.next()
			if d < ceiling/2 || d > ceiling {
				t.Fatalf("round %d: next() #%d = %v, want from %v to %v", round, i+1, d, ceiling/2, ceiling)
			}
			if d > max {
				t.Fatalf("round %d: next() #%d = %v, above max %v", round, i+1, d, max)
			}
			if ceiling < max && d < prev {
				t.Fatalf("round %d: next() #%d = %v, below the %v before it: delays must grow until the cap", round, i+1, d, prev)
			}
			prev = d
		}
		// After reset the sequence starts over.
		b.reset()
	}
}

// TestBackoffJitter checks that replicas do not wait in step: many first
// delays are not all alike.
func TestBackoffJitter(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		b := backoff{min: time.Second, max: time.Minute}
		seen[b.next()] = true
	}
	if len(seen) < 10 {
		t.Errorf("50 first delays took %d values, want them spread", len(seen))
	}
}

func TestBackoffMinAboveMax(t *testing.T) {
	b := backoff{min: time.Minute, max: time.Second}
	for i := range 5 {
		if d := b.next(); d < time.Second/2 || d > time.Second {
			t.Errorf("next() #%d with min above max = %v, want from 500ms to 1s", i+1, d)
		}
	}
}
