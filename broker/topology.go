package broker

import (
	"errors"
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types.
const (
	Classic = "classic"
	Quorum  = "quorum"
)

// Topology is the queue warren consumes and what routes messages to it.
type Topology struct {
	// Queue is the name of the queue to consume.
	Queue string
	// QueueType is Classic or Quorum; empty means Classic.
	QueueType string
	// Declare creates what is missing; false only checks that the queue
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
}

// QueueArgs returns the arguments Queue is declared with.
func (t Topology) QueueArgs() amqp.Table {
	qt := t.QueueType
	if qt == "" {
		qt = Classic
	}
	return amqp.Table{amqp.QueueTypeArg: qt}
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
	declare := ch.QueueDeclare
	if !t.Declare {
		declare = ch.QueueDeclarePassive
	}
	if _, err := declare(t.Queue,
		true,  // durable
		false, // autoDelete
		false, // exclusive
		false, // noWait
		t.QueueArgs()); err != nil {
		return fmt.Errorf("declare queue %q: %w", t.Queue, explain(err))
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
