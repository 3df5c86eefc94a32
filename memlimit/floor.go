package memlimit

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultHeapFloor is the heap the collector may grow to before it runs,
// however small the live heap: with GOGC's 100 it runs each time the
// heap doubles, which for warren's 1 to 2 MiB of live heap under a fast
// queue is 25 times a second, each cycle taking CPU that the broker on
// the same node needs. make bench, noop drains vs the plain consumer, in
// one quiet hour: GOGC 100 0.85x to 0.94x (peak RSS 18 MiB); a 16 MiB
// floor 0.96x to 1.18x (29 MiB); 32 MiB no better than 16 (45 MiB).
const DefaultHeapFloor = 16 << 20

// liveHeap is the runtime metric of the heap the last cycle marked live.
const liveHeap = "/gc/heap/live:bytes"

// FloorHeap lets the heap grow to floor bytes before a collection while
// the live heap is under half of it, by raising GOGC after each cycle;
// above that GOGC is 100, the runtime's default, and the soft memory
// limit bounds the rest as before. It returns a function that stops the
// adjustment and puts GOGC back to 100. It takes over GOGC: call it only
// when the user did not set GOGC.
func FloorHeap(floor int64) (stop func()) {
	f := &floorer{floor: floor, percent: 100}
	f.tune()
	f.arm()
	return f.stop
}

// floorer adjusts GOGC after each collection, from a finalizer: the
// runtime runs it once the cycle that found its sentinel unreachable is
// over, on its own goroutine, with no goroutine of warren's to own.
type floorer struct {
	floor int64

	mu      sync.Mutex
	stopped bool
	percent int // in force
}

// sentinel is allocated only to be found unreachable: a pointer field
// keeps it out of the tiny allocator, whose blocks die together.
type sentinel struct {
	_ *int
	_ [8]byte
}

func (f *floorer) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		f.mu.Lock()
		stopped := f.stopped
		f.mu.Unlock()
		if stopped {
			return
		}
		f.tune()
		f.arm()
	})
}

// tune sets GOGC so that the next collection comes at the floor, or at
// twice the live heap if that is more.
func (f *floorer) tune() {
	s := []metrics.Sample{{Name: liveHeap}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p := percentFor(f.floor, int64(s[0].Value.Uint64()))
	f.mu.Lock()
	defer f.mu.Unlock()
	// A tenth of a change is not worth a call into the runtime.
	if f.stopped || (p*10 >= f.percent*9 && p*10 <= f.percent*11) {
		return
	}
	f.percent = p
	debug.SetGCPercent(p)
}

func (f *floorer) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.percent = 100
	debug.SetGCPercent(100)
}

// heapMinimum is the runtime's smallest heap goal at GOGC=100; it scales
// with GOGC (4 MiB x GOGC / 100), so a GOGC above floor / heapMinimum x 100
// would put the goal above the floor however small the live heap.
const heapMinimum = 4 << 20

// percentFor returns the GOGC that puts the next collection of a heap of
// live bytes at floor, and never below 100.
func percentFor(floor, live int64) int {
	if live <= 0 || floor <= 2*live {
		return 100
	}
	return int(max(min(floor*100/live-100, floor*100/heapMinimum), 100))
}
