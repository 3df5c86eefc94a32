package broker

import (
	"math"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers warren writes on the copies it publishes.
const (
	// HeaderAttempts counts the attempts a message has had and failed.
	HeaderAttempts = "x-warren-attempts"
	// HeaderRetryAt holds the earliest time (Unix milliseconds) at which a
	// message may be tried again, when a handler asked for a longer wait
	// (Retry-After) than any retry queue holds a message.
	HeaderRetryAt = "x-warren-retry-at"
	// HeaderReason says why a message was dead-lettered.
	HeaderReason = "x-warren-reason"
	// HeaderDiedAt is when a message was dead-lettered.
	HeaderDiedAt = "x-warren-died-at"
	// HeaderQueue names the queue a dead message came from.
	HeaderQueue = "x-warren-queue"
	// HeaderExchange and HeaderRoutingKey keep how a message was first
	// published: its copies travel through warren's own queues.
	HeaderExchange   = "x-warren-exchange"
	HeaderRoutingKey = "x-warren-routing-key"
	// HeaderPublishID is a token unique to one publish, set by
	// Publisher.Send: the broker hands it back in basic.return, which is
	// how a return finds the publish it answers.
	HeaderPublishID = "x-warren-publish-id"
)

// Attempts returns the attempts a delivery already had, from its
// x-warren-attempts header. Whatever the header holds (missing, negative,
// text, a float, a number too large) gives a number from 0 up.
func Attempts(h amqp.Table) int {
	var n int64
	switch v := h[HeaderAttempts].(type) {
	case int:
		n = int64(v)
	case int8:
		n = int64(v)
	case int16:
		n = int64(v)
	case int32:
		n = int64(v)
	case int64:
		n = v
	case uint8:
		n = int64(v)
	case uint16:
		n = int64(v)
	case uint32:
		n = int64(v)
	case float32:
		n = floatAttempts(float64(v))
	case float64:
		n = floatAttempts(v)
	case string:
		n, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	}
	switch {
	case n < 0:
		return 0
	case n > math.MaxInt32:
		return math.MaxInt32
	}
	return int(n)
}

func floatAttempts(f float64) int64 {
	if math.IsNaN(f) || f < 0 {
		return 0
	}
	if f > math.MaxInt32 {
		return math.MaxInt32
	}
	return int64(f)
}

// RetryAt returns the x-warren-retry-at time of a delivery, if any.
func RetryAt(h amqp.Table) (time.Time, bool) {
	ms, ok := h[HeaderRetryAt].(int64)
	if !ok || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// CopyOf returns a publishing of d's body and properties, with its headers
// cloned so they can be changed. The expiration is dropped (a copy that
// expires in warren's queues would return early, or vanish from the
// dead-letter queue) and so is the user id (the broker checks it against
// the publishing user, who may not be warren's), and the publish token of
// the hop that brought d (Publisher.Send sets a new one).
//
// The first copy of a message records the exchange and routing key d came
// with, in warren's own headers; later copies keep them. Only those
// headers say where a message came from: a copy back from warren's retry
// queue arrives through the default exchange with the queue's name as its
// key, and an x-death header may be another system's, written before the
// message ever reached warren.
func CopyOf(d *amqp.Delivery) amqp.Publishing {
	h := make(amqp.Table, len(d.Headers)+2)
	for k, v := range d.Headers {
		h[k] = v
	}
	delete(h, HeaderPublishID)
	if _, ok := h[HeaderRoutingKey]; !ok {
		h[HeaderExchange], h[HeaderRoutingKey] = d.Exchange, d.RoutingKey
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}
