// Package chaos is warren's fault suite: several warren processes, the
// real binary, consume a queue through the HTTP handler while the suite
// closes their connections, restarts the broker's application and the
// broker itself, kills and rolls the processes, stalls and cuts their links
// and makes the HTTP endpoint fail; then it checks that no message was
// lost. It has no code of its own; see chaos_test.go.
//
// It runs against a RabbitMQ node of its own, started by the suite, so
// that restarting it disturbs no other test; it needs root and an
// installed rabbitmq-server. Select a profile with WARREN_CHAOS: "short"
// (CI, a few minutes; make chaos-short) or "full" (make chaos). Without
// it, the suite is skipped.
package chaos
