// Package memlimit reads the memory limit of the cgroup warren runs in (a
// pod's memory limit) and sizes from it what warren may hold: the bytes of
// message bodies in flight, and the Go runtime's soft memory limit.
package memlimit

import (
	"bufio"
	"bytes"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

const (
	// budgetShare is the part of the cgroup's limit that message bodies
	// may take: receiving a body costs about 2.3 times its size while
	// amqp091-go assembles it (its buffer grows by appending frames), so
	// the bodies held, one being received and the runtime fit in a
	// quarter with room to spare.
	budgetShare = 4
	// softPercent of the cgroup's limit is where the Go collector starts
	// working harder, short of the kernel's OOM kill.
	softPercent = 90
	// softOverhead is what the soft limit leaves, beside twice the budget
	// (the bodies held and one being received), for the runtime and the
	// rest of warren when no cgroup limits the process.
	softOverhead = 64 << 20
	// unlimited is where a cgroup v1 limit means none: the kernel writes
	// the largest page-aligned int64.
	unlimited = 1 << 60
)

// Plan is what warren may hold in memory, and where each figure came
// from, for the log.
type Plan struct {
	// Budget is the bytes of message bodies held at once.
	Budget int64
	// BudgetFrom is "WARREN_MAX_INFLIGHT_BYTES", "cgroup" or "default".
	BudgetFrom string
	// SoftLimit is the Go runtime's soft memory limit to set
	// (debug.SetMemoryLimit); 0 leaves the runtime's own.
	SoftLimit int64
	// SoftFrom is "cgroup", "budget" or "GOMEMLIMIT" (set by the user:
	// left alone).
	SoftFrom string
}

// Decide returns the plan for a budget given by the user (0: none), the
// budget to use without one nor a cgroup limit, the cgroup's memory limit
// (0: none) and whether GOMEMLIMIT is set. Without a GOMEMLIMIT, the
// garbage collector is told of the memory warren may use, so that its
// headroom (GOGC=100: twice the live heap) does not double the peak of
// large messages.
func Decide(budget, fallback, cgroup int64, gomemlimit bool) Plan {
	var p Plan
	switch {
	case budget > 0:
		p.Budget, p.BudgetFrom = budget, "WARREN_MAX_INFLIGHT_BYTES"
	case cgroup > 0:
		p.Budget, p.BudgetFrom = max(cgroup/budgetShare, 1<<20), "cgroup"
	default:
		p.Budget, p.BudgetFrom = fallback, "default"
	}
	switch {
	case gomemlimit:
		p.SoftFrom = "GOMEMLIMIT"
	case cgroup > 0:
		p.SoftLimit, p.SoftFrom = cgroup/100*softPercent, "cgroup"
	default:
		p.SoftLimit, p.SoftFrom = 2*p.Budget+softOverhead, "budget"
	}
	return p
}

// Cgroup returns the memory limit of the cgroup the process runs in, in
// bytes, or 0 when there is none; fsys is the root file system. It reads
// cgroup v2's memory.max ("max" is none) or v1's memory.limit_in_bytes
// of the process's cgroup (from /proc/self/cgroup) and of its ancestors,
// and returns the smallest: a container sees its own cgroup as the root,
// a process outside one sees the whole path.
func Cgroup(fsys fs.FS) int64 {
	own, _ := fs.ReadFile(fsys, "proc/self/cgroup") // none: the roots alone
	v2, v1 := "/", "/"
	sc := bufio.NewScanner(bytes.NewReader(own))
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			v1 = parts[2]
		}
	}
	limit := lowest(fsys, "sys/fs/cgroup", v2, "memory.max")
	if l := lowest(fsys, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); l > 0 && (limit == 0 || l < limit) {
		limit = l
	}
	return limit
}

// lowest returns the smallest limit in file of the cgroup dir under root
// and of its ancestors, 0 if none sets one.
func lowest(fsys fs.FS, root, dir, file string) int64 {
	var limit int64
	for dir = path.Clean("/" + dir); ; dir = path.Dir(dir) {
		if l := readLimit(fsys, path.Join(root, dir, file)); l > 0 && (limit == 0 || l < limit) {
			limit = l
		}
		if dir == "/" {
			return limit
		}
	}
}

// readLimit reads one limit file; 0 means none, or none readable.
func readLimit(fsys fs.FS, name string) int64 {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= unlimited { // "max", or v1's "none"
		return 0
	}
	return n
}
