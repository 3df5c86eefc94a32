package worker_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zapcore"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// hotLoop is how many handler runs of one message mean that warren hands
// a message back in a loop instead of backing off: the hot loops of issue
// 12 ran hundreds of times a second.
const hotLoop = 20

// channelAt opens a connection to the broker at url, for the caller to
// close, and a channel on it. Tests poll with it: a connection kept to the
// end of the test each time would use up the broker's file descriptors.
func channelAt(t *testing.T, url string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		t.Fatalf("open channel: %v", err)
	}
	return conn, ch
}

// readyIn returns the ready messages of queue on the broker at url, 0 if
// the queue does not exist.
func readyIn(t *testing.T, url, queue string) int {
	t.Helper()
	conn, ch := channelAt(t, url)
	defer conn.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0
	}
	return q.Messages
}

// publishOn publishes msgs to queue on the broker at url, persistent, and
// returns how many the broker confirmed (a queue at its length limit with
// reject-publish refuses the rest).
func publishOn(t *testing.T, url, queue string, msgs ...amqp.Publishing) int {
	t.Helper()
	conn, ch := channelAt(t, url)
	defer conn.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	confirmed := 0
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, false, false, m)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if dc.Wait() {
			confirmed++
		}
	}
	return confirmed
}

// copyErrors returns the ERROR lines that say a copy was not confirmed.
func copyErrors(h *harness) int {
	return h.logs.FilterMessage("copy not confirmed; handing the message back").FilterLevelExact(zapcore.ErrorLevel).Len()
}

func TestUnroutableCopyDeclaresTopologyAgain(t *testing.T) {
	for _, tt := range []struct {
		name    string
		deleted string // suffix of the queue an operator deleted
		fail    error
	}{
		{name: "dead-letter queue deleted", deleted: ".dead", fail: worker.Permanent(errors.New("cannot parse"))},
		{name: "retry queue deleted", deleted: ".retry.1m", fail: errors.New("transient")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := brokertest.Queue(t)
			rec := newRecorder(func(context.Context, *worker.Message, int) error { return tt.fail })
			h := start(t, worker.Config{
				Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Minute}},
				Handler:  rec,
			})
			h.waitReady(t)
			target := q + tt.deleted
			brokertest.DeleteQueues(t, target)
			brokertest.Publish(t, q, "m")
			brokertest.WaitFor(t, 30*time.Second, "the copy in "+target+", or a hot loop", func() bool {
				return rec.calls() >= hotLoop || readyIn(t, brokertest.URL(), target) == 1
			})
			if n := rec.calls(); n >= hotLoop {
				t.Fatalf("handler ran %d times with %s deleted, want fewer than %d: warren declares it again instead of looping", n, target, hotLoop)
			}
			if got := h.metric(t, "warren_copy_failures_total", "reason", "unroutable"); got < 1 {
				t.Errorf("warren_copy_failures_total{reason=unroutable} = %v, want at least 1", got)
			}
			brokertest.WaitFor(t, 10*time.Second, "the original settled", func() bool {
				return brokertest.Ready(t, q) == 0 && h.metric(t, "warren_inflight_messages") == 0
			})
		})
	}
}

// TestCopiesSharingAMessageIdAreNotLost is issue 12's sequence end to
// end: Q.dead deleted, as by an operator purging it, and 20 messages that
// share one message id, each dead-lettered by the handler. A return
// matched by message id once let 19 of them be acked while their copies
// were dropped; every one must end in Q.dead.
func TestCopiesSharingAMessageIdAreNotLost(t *testing.T) {
	q := brokertest.Queue(t)
	h := start(t, worker.Config{
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Minute}},
		Handler:  worker.HandlerFunc(func(context.Context, *worker.Message) error { return worker.Permanent(errors.New("cannot parse")) }),
	})
	h.waitReady(t)
	brokertest.DeleteQueues(t, q+".dead")
	const n = 20
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = amqp.Publishing{MessageId: "order-42", Body: []byte(fmt.Sprintf("m%02d", i))}
	}
	if got := publishOn(t, brokertest.URL(), q, msgs...); got != n {
		t.Fatalf("%d of %d published", got, n)
	}
	brokertest.WaitFor(t, 30*time.Second, "every message settled", func() bool {
		return brokertest.Ready(t, q) == 0 && h.metric(t, "warren_inflight_messages") == 0 &&
			h.metric(t, "warren_messages_total", "outcome", "dead") == n
	})
	bodies := map[string]bool{}
	for _, d := range brokertest.Get(t, q+".dead", n+1) {
		bodies[string(d.Body)] = true
	}
	if len(bodies) != n {
		t.Errorf("%s holds %d distinct messages of the %d dead-lettered, want all: the others were acked without a copy", q+".dead", len(bodies), n)
	}
}

func TestRefusedCopyBacksOff(t *testing.T) {
	node := brokertest.StartNode(t)
	q := brokertest.Name(t)
	// The quorum retry queue is full and refuses publishes (x-overflow
	// reject-publish, which warren declares it with, at a length limit).
	node.Ctl(t, "set_policy", "-p", "/", "--apply-to", "queues", "full",
		"^"+regexp.QuoteMeta(q)+`\.retry\.`, `{"max-length":1,"overflow":"reject-publish"}`)
	rec := newRecorder(func(context.Context, *worker.Message, int) error { return errors.New("transient") })
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{node.URL()}},
		Topology: broker.Topology{Queue: q, QueueType: broker.Quorum, Declare: true, RetryDelays: []time.Duration{time.Minute}},
		Handler:  rec,
	})
	h.waitReady(t)
	// Fill the retry queue until the broker refuses one more.
	fill := make([]amqp.Publishing, 5)
	for i := range fill {
		fill[i] = amqp.Publishing{Body: []byte("filler")}
	}
	if n := publishOn(t, node.URL(), q+".retry.1m", fill...); n == len(fill) {
		t.Fatalf("the retry queue took %d messages: the length limit does not hold", n)
	}
	publishOn(t, node.URL(), q, amqp.Publishing{Body: []byte("m")})

	brokertest.WaitFor(t, 30*time.Second, "4 refused copies, or a hot loop", func() bool {
		return rec.calls() >= hotLoop || h.metric(t, "warren_copy_failures_total", "reason", "refused") >= 4
	})
	if n := rec.calls(); n >= hotLoop {
		t.Fatalf("handler ran %d times while its copy was refused, want fewer than %d: the hand-back must back off", n, hotLoop)
	}
	if n := copyErrors(h); n != 1 {
		t.Errorf("%d ERROR lines for refused copies, want 1 (then debug)", n)
	}
	if err := h.w.Ready(); err == nil || !strings.Contains(err.Error(), "copies refused") {
		t.Errorf("Ready() = %v while copies are refused, want a reason that says so", err)
	}
	// Room again: the next copy is confirmed, and the worker is ready.
	node.Ctl(t, "purge_queue", "-p", "/", q+".retry.1m")
	brokertest.WaitFor(t, 30*time.Second, "the copy confirmed and the worker ready", func() bool {
		return h.metric(t, "warren_retry_publishes_total", "result", "confirmed") == 1 && h.w.Ready() == nil
	})
}

func TestRevokedWritePermissionIsShownAndBacksOff(t *testing.T) {
	node := brokertest.StartNode(t)
	const user, password = "warren-worker", "s3cret"
	node.Ctl(t, "add_user", user, password)
	node.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	q := brokertest.Name(t)
	rec := newRecorder(func(context.Context, *worker.Message, int) error { return errors.New("transient") })
	h := start(t, worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{strings.Replace(node.URL(), "guest:guest", user+":"+password, 1)}},
		Topology: broker.Topology{Queue: q, Declare: true, RetryDelays: []time.Duration{time.Minute}},
		Handler:  rec,
	})
	h.waitReady(t)
	node.Ctl(t, "clear_permissions", "-p", "/", user)
	node.Ctl(t, "set_permissions", "-p", "/", user, ".*", "^$", ".*") // configure and read, no write
	msgs := make([]amqp.Publishing, 20)
	for i := range msgs {
		msgs[i] = amqp.Publishing{Body: []byte(brokertest.Bodies("m", 20)[i])}
	}
	publishOn(t, node.URL(), q, msgs...)

	brokertest.WaitFor(t, 30*time.Second, "the refusal on /readyz, or a hot loop", func() bool {
		err := h.w.Ready()
		return rec.calls() >= 10*hotLoop || err != nil && strings.Contains(err.Error(), "ACCESS_REFUSED")
	})
	// Watch for a while: a hot loop runs hundreds of times in it.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && rec.calls() < 3*hotLoop {
		time.Sleep(100 * time.Millisecond)
	}
	if n := rec.calls(); n >= 3*hotLoop {
		t.Fatalf("handler ran %d times for 20 messages whose copies were refused, want fewer than %d", n, 3*hotLoop)
	}
	if err := h.w.Ready(); err == nil || !strings.Contains(err.Error(), "ACCESS_REFUSED") {
		t.Errorf("Ready() = %v, want the refusal", err)
	}
	refused := 0
	for _, e := range h.logs.FilterLevelExact(zapcore.ErrorLevel).All() {
		for _, f := range e.Context {
			if err, ok := f.Interface.(error); ok && f.Key == "error" && strings.Contains(err.Error(), "ACCESS_REFUSED") {
				refused++
			}
		}
	}
	if refused != 1 {
		t.Errorf("%d ERROR lines name the refusal, want 1 (then debug)", refused)
	}
	if got := h.metric(t, "warren_copy_failures_total", "reason", "channel_error"); got < 1 {
		t.Errorf("warren_copy_failures_total{reason=channel_error} = %v, want at least 1", got)
	}
	node.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	brokertest.WaitFor(t, 60*time.Second, "every copy confirmed and the worker ready", func() bool {
		return readyIn(t, node.URL(), q+".retry.1m") == 20 && h.w.Ready() == nil
	})
}
