package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/internal/warrentest"
)

// binary is the warren binary built once for the suite, with the race
// detector: a race in a failover path fails the process, and the test.
var binary string

func TestMain(m *testing.M) {
	if _, ok := profiles[os.Getenv("WARREN_CLUSTER")]; !ok {
		os.Exit(m.Run()) // skipped: nothing to build
	}
	dir, err := os.MkdirTemp("", "warren-cluster-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = warrentest.Build(dir, "../cmd/warren", nil, "-race")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gorace fails a replica at once on a race the detector finds, with an
// exit code of its own.
const gorace = "halt_on_error=1 exitcode=66"

// startReplica starts a warren process, as a pod of a Deployment.
func startReplica(t *testing.T, name string, env []string) *warrentest.Process {
	t.Helper()
	r := warrentest.NewProcess(t, warrentest.ProcessConfig{Name: name, Binary: binary, GoRace: gorace,
		Env: append(env, "WARREN_CONNECTION_NAME=cluster-"+name)})
	r.Start(t)
	return r
}

// node returns the node replica r says it is on, host:port, from
// warren_broker_info; "" if none.
func node(r *warrentest.Process) string {
	sc := bufio.NewScanner(strings.NewReader(r.Metrics()))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, `warren_broker_info{node="`); ok {
			addr, value, _ := strings.Cut(rest, `"} `)
			if value == "1" {
				return addr
			}
		}
	}
	return ""
}

// losses counts the connections replica r lost, from its logs.
func losses(r *warrentest.Process) int {
	return strings.Count(r.Out.String(), `"msg":"connection lost"`)
}

// publish publishes bodies to queue through the cluster, persistent and
// confirmed, failing over as warren publish does.
func publish(t *testing.T, urls []string, queue string, bodies []string) {
	t.Helper()
	d := &broker.Dialer{URLs: urls}
	s := &broker.Stream{Dial: d.Dial, Window: 500, RetryFor: time.Minute}
	msgs := func(yield func(amqp.Publishing) bool) {
		for _, b := range bodies {
			if !yield(amqp.Publishing{ContentType: "text/plain", MessageId: b, Body: []byte(b)}) {
				return
			}
		}
	}
	n, err := s.Publish(context.Background(), "", queue, msgs)
	if err != nil || n != len(bodies) {
		t.Fatalf("publish: %d of %d confirmed: %v", n, len(bodies), err)
	}
}

// nodeURLs returns the URLs of the cluster's nodes.
func nodeURLs(c *brokertest.Cluster) []string {
	return broker.ParseURLs(c.URLs())
}
