// Package cluster is warren's failover suite: several warren processes,
// the real binary, consume a quorum queue through the HTTP handler on a
// three-node RabbitMQ cluster started by the suite, while it kills the
// quorum leader's node, the node a replica is on, every node in turn,
// restarts every node gracefully as an upgrade does, and cuts a node off
// while retry and dead-letter copies are published; warren publish and
// warren dead replay lose their node halfway. Each scenario checks that
// every message was handled, that the queues are empty at the end, and
// reports duplicates and the time to recover. It has no code of its own;
// see cluster_test.go.
//
// It needs root and an installed rabbitmq-server, and leaves the
// machine's own node alone. Select a profile with WARREN_CLUSTER: "short"
// (CI) or "full" (make cluster-test); without it, the suite is skipped.
package cluster
