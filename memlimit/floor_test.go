package memlimit

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestPercentFor(t *testing.T) {
	for _, tt := range []struct {
		floor, live int64
		want        int
	}{
		{32 << 20, 0, 100},         // nothing measured yet
		{32 << 20, 4 << 20, 700},   // 4 MiB live: collect at 32 MiB
		{32 << 20, 16 << 20, 100},  // half the floor: twice live is the floor
		{32 << 20, 100 << 20, 100}, // above it: GOGC's default
		{32 << 20, 1, 800},         // the runtime's minimum goal, 4 MiB x 8: the floor
		{8 << 20, 1 << 20, 200},    // a small floor
	} {
		if got := percentFor(tt.floor, tt.live); got != tt.want {
			t.Errorf("percentFor(%d, %d) = %d, want %d", tt.floor, tt.live, got, tt.want)
		}
	}
}

// TestFloorHeapCollectsLessOften: under the same garbage, with a small
// live heap, the floor makes the collector run a fraction as often, and
// stop puts GOGC back.
func TestFloorHeapCollectsLessOften(t *testing.T) {
	cycles := func() uint32 {
		var live [][]byte
		for i := range 64 {
			live = append(live, make([]byte, 16<<10)) // 1 MiB live
			_ = i
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var sink []byte
		for range 256 << 10 { // 256 MiB of garbage, 1 KiB at a time
			sink = make([]byte, 1<<10)
		}
		_ = sink
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(live)
		return after.NumGC - before.NumGC
	}
	without := cycles()
	stop := FloorHeap(32 << 20)
	runtime.GC() // the first cycle tunes
	with := cycles()
	stop()
	if with*4 > without {
		t.Errorf("%d collections with a 32 MiB floor, %d without: want a quarter or fewer", with, without)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC after stop = %d, want 100", got)
	}
	t.Logf("collections for 256 MiB of garbage: %d without the floor, %d with", without, with)
}
