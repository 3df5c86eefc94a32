package main

import (
	"strings"
	"testing"

	"github.com/warren-mq/warren/internal/brokertest"
)

// TestPublishOverMaxMessageSizeSaysWhy: a broker whose max_message_size
// is below a line's length closes the channel; warren publish fails with
// the broker's reason, not only "channel/connection is not open".
func TestPublishOverMaxMessageSizeSaysWhy(t *testing.T) {
	n := brokertest.NewNodes(t).Start(t, "warren", "max_message_size = 1024")
	q := brokertest.Name(t) // the node goes with the test: no clean-up
	nodeChannel(t, n, q)
	env := []string{"WARREN_AMQP_URL=" + n.URL(), "WARREN_QUEUE=" + q}
	code, out := runWarren(t, env, strings.Repeat("x", 2000)+"\n", "publish")
	if code != 1 || !strings.Contains(out, "published 0 of 1 messages") || !strings.Contains(out, "larger than configured max size 1024") {
		t.Errorf("warren publish of 2000 bytes to a broker taking 1024 = %d, %q; want 1, 0 of 1, the broker's reason", code, out)
	}
}
