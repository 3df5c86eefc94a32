package memlimit

import (
	"testing"
	"testing/fstest"
)

func TestCgroup(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	for _, tt := range []struct {
		name string
		give fstest.MapFS
		want int64
	}{
		{name: "nothing", give: fstest.MapFS{}},
		{name: "v2 namespace root", want: 512 << 20, give: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("536870912\n"),
		}},
		{name: "v2 max is none", give: fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("max\n"),
		}},
		{name: "v2 own cgroup below an unlimited root", want: 1 << 30, give: fstest.MapFS{
			"proc/self/cgroup":                          file("0::/kubepods/pod1/c1\n"),
			"sys/fs/cgroup/memory.max":                  file("max\n"),
			"sys/fs/cgroup/kubepods/pod1/c1/memory.max": file("max\n"),
			"sys/fs/cgroup/kubepods/pod1/memory.max":    file("1073741824\n"),
		}},
		{name: "v1 path", want: 256 << 20, give: fstest.MapFS{
			"proc/self/cgroup":                                           file("12:pids:/x\n4:memory:/process_api/abc\n0::/\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes":                 file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": file("268435456\n"),
		}},
		{name: "v1 none", give: fstest.MapFS{
			"proc/self/cgroup":                                           file("4:memory:/process_api/abc\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes":                 file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": file("9223372036854771712\n"),
		}},
		{name: "v1 joined controllers", want: 64 << 20, give: fstest.MapFS{
			"proc/self/cgroup": file("3:cpu,memory:/a\n"),
			"sys/fs/cgroup/memory/a/memory.limit_in_bytes": file("67108864"),
		}},
		{name: "garbage", give: fstest.MapFS{
			"proc/self/cgroup":         file("nonsense\n"),
			"sys/fs/cgroup/memory.max": file("lots\n"),
		}},
	} {
		if got := Cgroup(tt.give); got != tt.want {
			t.Errorf("Cgroup(%s) = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestDecide(t *testing.T) {
	const mi = 1 << 20
	for _, tt := range []struct {
		name           string
		budget, cgroup int64
		gomemlimit     bool
		want           Plan
	}{
		{name: "nothing", want: Plan{Budget: 256 * mi, BudgetFrom: "default", SoftLimit: 576 * mi, SoftFrom: "budget"}},
		{name: "budget given", budget: 64 * mi, want: Plan{Budget: 64 * mi, BudgetFrom: "WARREN_MAX_INFLIGHT_BYTES", SoftLimit: 192 * mi, SoftFrom: "budget"}},
		{name: "cgroup", cgroup: 1000 * mi, want: Plan{Budget: 250 * mi, BudgetFrom: "cgroup", SoftLimit: 900 * mi, SoftFrom: "cgroup"}},
		{name: "budget and cgroup", budget: 100 * mi, cgroup: 1000 * mi, want: Plan{Budget: 100 * mi, BudgetFrom: "WARREN_MAX_INFLIGHT_BYTES", SoftLimit: 900 * mi, SoftFrom: "cgroup"}},
		{name: "tiny cgroup", cgroup: 2 * mi, want: Plan{Budget: mi, BudgetFrom: "cgroup", SoftLimit: 2 * mi / 100 * 90, SoftFrom: "cgroup"}},
		{name: "GOMEMLIMIT set", cgroup: 1000 * mi, gomemlimit: true, want: Plan{Budget: 250 * mi, BudgetFrom: "cgroup", SoftFrom: "GOMEMLIMIT"}},
	} {
		if got := Decide(tt.budget, 256*mi, tt.cgroup, tt.gomemlimit); got != tt.want {
			t.Errorf("Decide(%s) = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
