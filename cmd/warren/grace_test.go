package main

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/warren-mq/warren/health"
	"github.com/warren-mq/warren/worker"
)

// TestChartGraceCoversTheExit: the chart's terminationGracePeriodSeconds
// is the shutdown timeout plus warren.drainBoundSeconds plus a margin; that
// bound must cover the longest warren takes past its shutdown timeout to
// exit (the worker's drain bound, then the health server's shutdown), or
// the kubelet kills a drain that would have finished.
func TestChartGraceCoversTheExit(t *testing.T) {
	tpl, err := os.ReadFile("../../charts/warren/templates/_helpers.tpl")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`define "warren.drainBoundSeconds" -}}\s*(\d+)\s*{{-`).FindSubmatch(tpl)
	if m == nil {
		t.Fatal(`_helpers.tpl has no "warren.drainBoundSeconds" holding a number`)
	}
	n, _ := strconv.Atoi(string(m[1]))
	chart := time.Duration(n) * time.Second
	for _, shutdown := range []time.Duration{time.Second, 25 * time.Second, 10 * time.Minute} {
		if need := worker.DrainBound(shutdown) - shutdown + health.ShutdownTimeout; chart < need {
			t.Errorf("chart's warren.drainBoundSeconds = %s; warren may take %s past a shutdown timeout of %s", chart, need, shutdown)
		}
	}
}
