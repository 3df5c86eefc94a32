package worker

import (
	"math/rand/v2"
	"time"
)

// backoff yields growing, jittered delays between reconnection attempts,
// so that replicas that lost the broker together do not return together.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the delay before the next attempt: half of min*2^attempt,
// capped at max, plus a random part of up to the same again.
func (b *backoff) next() time.Duration {
	d := b.max
	if b.attempt < 30 {
		if e := b.min << b.attempt; e > 0 && e < b.max {
			d = e
		}
	}
	b.attempt++
	half := d / 2
	return half + rand.N(half+1)
}

// reset starts the sequence again after a connection proved healthy.
func (b *backoff) reset() { b.attempt = 0 }
