package brokertest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// clusterTimeout bounds the wait for a node to be back in its cluster;
// seen: 7 to 10 s for a killed node to rejoin on 2 cores.
const clusterTimeout = 2 * time.Minute

// Cluster is a RabbitMQ cluster of nodes started by a test, on 127.0.0.1,
// each with its own ports and data, sharing an Erlang cookie and an epmd
// of their own: the machine's default node is left alone.
type Cluster struct {
	// Nodes are the cluster's nodes; the others joined the first.
	Nodes []*Node
}

// StartCluster starts size nodes (about 7 s each on 2 cores) and joins
// the second and later ones to the first (stop_app, reset, join_cluster,
// start_app). Everything is stopped and removed when the test ends. It
// skips the test when CanStartNode says no.
func StartCluster(t testing.TB, size int) *Cluster {
	t.Helper()
	ns := NewNodes(t)
	c := &Cluster{}
	for i := range size {
		n := ns.Start(t, fmt.Sprintf("rabbit%d", i+1))
		if i > 0 {
			n.Ctl(t, "stop_app")
			n.Ctl(t, "reset")
			n.Ctl(t, "join_cluster", c.Nodes[0].Name)
			n.StartApp(t)
		}
		c.Nodes = append(c.Nodes, n)
	}
	c.WaitRunning(t)
	return c
}

// URLs returns the AMQP URLs of the nodes, as the guest user,
// comma-separated: WARREN_AMQP_URL for the whole cluster.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Node returns the node listening on addr (host:port), or nil.
func (c *Cluster) Node(addr string) *Node {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// Running reports whether the node's server process runs.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Kill kills the node's Erlang VM and everything it started with SIGKILL,
// as the OOM killer or a lost machine does, and waits for it to be gone.
// Start brings it back with its data.
func (n *Node) Kill(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		t.Fatalf("kill node %s: not running", n.Name)
	}
	// The server runs in a session of its own: its process group is the
	// VM and its helpers (epmd is the cluster's, not in it).
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill node %s: %v", n.Name, err)
	}
	<-done
}

// running returns a node that runs, to ask the cluster through it.
func (c *Cluster) running(t testing.TB) *Node {
	t.Helper()
	for _, n := range c.Nodes {
		if n.Running() {
			return n
		}
	}
	t.Fatal("no node of the cluster runs")
	return nil
}

// RunningNodes returns the names of the nodes the cluster says run, as
// rabbitmqctl cluster_status reports them on a running node.
func (c *Cluster) RunningNodes(t testing.TB) []string {
	t.Helper()
	n := c.running(t)
	out, err := n.ctl(30*time.Second, "cluster_status", "--formatter", "json")
	if err != nil {
		return nil // the node may be shutting down or booting
	}
	var st struct {
		Running []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil
	}
	slices.Sort(st.Running)
	return st.Running
}

// WaitRunning waits until every node that runs is a running member of
// the cluster: after a start, the node has rejoined.
func (c *Cluster) WaitRunning(t testing.TB) {
	t.Helper()
	var want []string
	for _, n := range c.Nodes {
		if n.Running() {
			want = append(want, n.Name)
		}
	}
	slices.Sort(want)
	WaitFor(t, clusterTimeout, fmt.Sprintf("cluster running nodes %v", want), func() bool {
		return slices.Equal(c.RunningNodes(t), want)
	})
}

// Leader returns the node that leads the quorum queue, or nil if the
// cluster names none (an election is under way).
func (c *Cluster) Leader(t testing.TB, queue string) *Node {
	t.Helper()
	out, err := c.running(t).ctl(30*time.Second, "list_queues", "name", "leader", "--formatter", "json", "-q")
	if err != nil {
		return nil
	}
	var rows []struct {
		Name   string `json:"name"`
		Leader string `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil
	}
	for _, r := range rows {
		if r.Name != queue {
			continue
		}
		for _, n := range c.Nodes {
			if n.Name == r.Leader {
				return n
			}
		}
	}
	return nil
}

// Messages returns the messages (ready and unacknowledged) of every
// queue, by name, as a running node reports them; nil if it cannot say.
func (c *Cluster) Messages(t testing.TB) map[string]int {
	t.Helper()
	m, err := c.running(t).messages()
	if err != nil {
		return nil
	}
	return m
}

// Messages returns the messages (ready and unacknowledged) of every queue
// of the node, by name; it fails the test if the node cannot say.
func (n *Node) Messages(t testing.TB) map[string]int {
	t.Helper()
	m, err := n.messages()
	if err != nil {
		t.Fatalf("list queues of node %s: %v", n.Name, err)
	}
	return m
}

func (n *Node) messages() (map[string]int, error) {
	out, err := n.ctl(30*time.Second, "list_queues", "name", "messages", "--formatter", "json", "-q")
	if err != nil {
		return nil, err
	}
	var rows []struct {
		Name     string `json:"name"`
		Messages int    `json:"messages"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("list_queues: %w: %s", err, out)
	}
	m := make(map[string]int, len(rows))
	for _, r := range rows {
		m[r.Name] = r.Messages
	}
	return m, nil
}
