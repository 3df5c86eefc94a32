package broker

import (
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types.
const (
	Classic = "classic"
	Quorum  = "quorum"
)

// Topology is the queue warren consumes, what routes messages to it, and
// the queues warren owns beside it: one retry queue per delay, which holds a
// message for its delay and then returns it to Queue, and the dead-letter
// queue.
type Topology struct {
	// Queue is the name of the queue to consume.
	Queue string
	// QueueType is Classic or Quorum; empty means Classic. The queues warren
	// owns are of the same type.
	QueueType string
	// Declare creates what is missing; false only checks that the queues
	// and exchange exist (passive declarations).
	Declare bool
	// Exchange, if set, is bound to Queue with BindingKeys.
	Exchange string
	// ExchangeType is direct, fanout, topic or headers.
	ExchangeType string
	// BindingKeys are the routing keys of the bindings; empty means one
	// binding keyed by the queue name. For a headers exchange each key is
	// name=value, and a message must match all of them.
	BindingKeys []string
	// RetryDelays are the delays of the retry queues.
	RetryDelays []time.Duration
	// DeliveryLimit, for a quorum Queue, is how many deliveries a message
	// may have before the broker moves it to the dead-letter queue: the
	// guard against a message that kills every consumer before it can be
	// settled. 0 means no limit. It is the one argument warren puts on
	// Queue itself, and only when asked to.
	DeliveryLimit int
}

// DeadQueue returns the name of the dead-letter queue.
func (t Topology) DeadQueue() string { return t.Queue + ".dead" }

// RetryQueue returns the name of the retry queue that holds messages for d.
func (t Topology) RetryQueue(d time.Duration) string {
	return t.Queue + ".retry." + FormatDelay(d)
}

// FormatDelay writes d the short way, as in queue names: 1m, not 1m0s.
func FormatDelay(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func (t Topology) queueType() string {
	if t.QueueType == "" {
		return Classic
	}
	return t.QueueType
}

// QueueArgs returns the arguments Queue is declared with: its type, and
// for a quorum queue with a delivery limit, the limit and the route of
// what exceeds it to the dead-letter queue.
func (t Topology) QueueArgs() amqp.Table {
	args := amqp.Table{amqp.QueueTypeArg: t.queueType()}
	if t.queueType() == Quorum && t.DeliveryLimit > 0 {
		args["x-delivery-limit"] = int64(t.DeliveryLimit)
		t.deadLetterTo(args, t.DeadQueue())
	}
	return args
}

// RetryQueueArgs returns the arguments of the retry queue for d: messages
// expire after d and are dead-lettered back to Queue.
func (t Topology) RetryQueueArgs(d time.Duration) amqp.Table {
	args := amqp.Table{
		amqp.QueueTypeArg: t.queueType(),
		"x-message-ttl":   d.Milliseconds(),
	}
	t.deadLetterTo(args, t.Queue)
	return args
}

// DeadQueueArgs returns the arguments of the dead-letter queue.
func (t Topology) DeadQueueArgs() amqp.Table {
	return amqp.Table{amqp.QueueTypeArg: t.queueType()}
}

// deadLetterTo routes what args' queue dead-letters to queue, through the
// default exchange. Quorum queues do it at least once (RabbitMQ 3.10+): the
// message leaves only once the target confirmed it. Classic queues can only
// do it at most once.
func (t Topology) deadLetterTo(args amqp.Table, queue string) {
	args["x-dead-letter-exchange"] = ""
	args["x-dead-letter-routing-key"] = queue
	if t.queueType() == Quorum {
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
}

// Apply declares the topology on ch, or checks it when Declare is false. A
// failure closes ch, as the broker does with any channel exception.
func (t Topology) Apply(ch *amqp.Channel) error {
	if t.Exchange != "" {
		declare := ch.ExchangeDeclare
		if !t.Declare {
			declare = ch.ExchangeDeclarePassive
		}
		if err := declare(t.Exchange, t.ExchangeType,
			true,  // durable
			false, // autoDelete
			false, // internal
			false, // noWait
			nil); err != nil {
			return fmt.Errorf("declare exchange %q: %w", t.Exchange, explain(err))
		}
	}
	// Queue first: if the broker refuses it (it exists with another
	// type, say), nothing of warren's own is created with settings that
	// would then refuse the corrected ones. A dead-letter route to a queue
	// not declared yet is accepted.
	if err := t.declareQueue(ch, t.Queue, t.QueueArgs(), false); err != nil {
		return err
	}
	if err := t.declareQueue(ch, t.DeadQueue(), t.DeadQueueArgs(), true); err != nil {
		return err
	}
	for _, d := range t.RetryDelays {
		if err := t.declareQueue(ch, t.RetryQueue(d), t.RetryQueueArgs(d), true); err != nil {
			return err
		}
	}
	if t.Exchange == "" || !t.Declare {
		return nil
	}
	for _, b := range t.bindings() {
		if err := ch.QueueBind(t.Queue, b.key, t.Exchange,
			false, // noWait
			b.args); err != nil {
			return fmt.Errorf("bind queue %q to exchange %q with key %q: %w", t.Queue, t.Exchange, b.key, explain(err))
		}
	}
	return nil
}

// declareQueue declares the queue name, or checks it exists; own says
// that it is one of the queues warren owns beside Queue.
func (t Topology) declareQueue(ch *amqp.Channel, name string, args amqp.Table, own bool) error {
	declare := ch.QueueDeclare
	if !t.Declare {
		declare = ch.QueueDeclarePassive
	}
	if _, err := declare(name,
		true,  // durable
		false, // autoDelete
		false, // exclusive
		false, // noWait
		args); err != nil {
		if own {
			return fmt.Errorf("declare queue %q: %w", name, explainOwn(err, t.Queue))
		}
		return fmt.Errorf("declare queue %q: %w", name, explain(err))
	}
	return nil
}

type binding struct {
	key  string
	args amqp.Table
}

func (t Topology) bindings() []binding {
	keys := t.BindingKeys
	if len(keys) == 0 {
		keys = []string{t.Queue}
	}
	if t.ExchangeType == amqp.ExchangeHeaders {
		args := amqp.Table{"x-match": "all"}
		for _, kv := range t.BindingKeys {
			name, value, _ := strings.Cut(kv, "=")
			args[name] = value
		}
		return []binding{{key: "", args: args}}
	}
	bs := make([]binding, len(keys))
	for i, k := range keys {
		bs[i] = binding{key: k}
	}
	return bs
}

// explain adds what to do to the broker errors a user meets when pointing
// warren at an existing topology.
func explain(err error) error {
	var aerr *amqp.Error
	if !errors.As(err, &aerr) {
		return err
	}
	switch aerr.Code {
	case amqp.PreconditionFailed:
		return fmt.Errorf("%w (it exists with other settings: match them, or set WARREN_DECLARE=false to use it as it is)", err)
	case amqp.NotFound:
		return fmt.Errorf("%w (it does not exist: create it, or set WARREN_DECLARE=true)", err)
	}
	return err
}

// explainOwn adds what to do when one of warren's own queues is refused.
// Using it as it is would be wrong: a retry queue without its TTL and route
// back to queue holds what it is given for good.
func explainOwn(err error, queue string) error {
	var aerr *amqp.Error
	if !errors.As(err, &aerr) || aerr.Code != amqp.PreconditionFailed {
		return explain(err)
	}
	return fmt.Errorf("%w (it is one of warren's own queues, and exists with other settings: "+
		"move any messages it holds to %q, delete it, and warren declares it again; "+
		"or give this worker another WARREN_QUEUE)", err, queue)
}
