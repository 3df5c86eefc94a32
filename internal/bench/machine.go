package bench

import (
	"runtime"
	"sync"
	"time"
)

// CPUScaling measures how much CPU-bound work the machine does with a
// loop on every CPU at once, as a multiple of what one loop does alone,
// each for d. A virtual machine's CPUs may share the host's cores,
// and every figure that needs both (the drains, where the broker and the
// consumer share them) moves with that. What they give process starts
// may differ again (BareExec says): on 2026-12-03 the development
// machine's two did 1.99x what one did, but started cat four at a time
// only 1.09x as fast as one at a time.
func CPUScaling(d time.Duration) float64 {
	// Alternated, so that a change in the host's load weighs on both.
	const pairs = 4
	var one, all uint64
	for range pairs {
		one += spin(1, d/pairs)
		all += spin(runtime.GOMAXPROCS(0), d/pairs)
	}
	if one == 0 {
		return 0
	}
	return float64(all) / float64(one)
}

// spin runs loops CPU-bound loops for d and returns the rounds of work
// they did in all.
func spin(loops int, d time.Duration) uint64 {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total uint64
	)
	stop := time.Now().Add(d)
	for range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rounds, x uint64 = 0, 1
			for time.Now().Before(stop) {
				// A round of arithmetic the compiler cannot drop: x is
				// used below.
				for range 10_000 {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
				}
				rounds++
			}
			mu.Lock()
			total += rounds
			if x == 0 { // never: xorshift of a non-zero x is non-zero
				total++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total
}
