package broker

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DialNamed dials as Dial does, and names the connection Name followed by
// suffix, so that a client's connections of different purposes (warren's
// consuming one, and the one its copies go out on) tell apart on the
// broker. Without a Name, the connection has no name either.
func (d *Dialer) DialNamed(ctx context.Context, suffix string) (*amqp.Connection, string, error) {
	return d.Dial(context.WithValue(ctx, nameSuffixKey{}, suffix))
}

// nameSuffixKey carries DialNamed's suffix down to dialOne, through the
// one path every dial takes.
type nameSuffixKey struct{}

func nameSuffix(ctx context.Context) string {
	s, _ := ctx.Value(nameSuffixKey{}).(string)
	return s
}
