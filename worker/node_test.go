package worker

import "testing"

func TestNodeAddr(t *testing.T) {
	for _, tt := range []struct {
		give, want string
	}{
		{give: "amqp://guest:xxxxx@rabbit-0.rabbit-nodes.mq.svc:5672/", want: "rabbit-0.rabbit-nodes.mq.svc:5672"},
		{give: "amqp://user:xxxxx@10.0.0.7/vhost", want: "10.0.0.7:5672"},
		{give: "amqps://user:xxxxx@broker.example.com/", want: "broker.example.com:5671"},
		{give: "amqp://[::1]:5673/", want: "[::1]:5673"},
		{give: "amqp://[::1]/", want: "[::1]:5672"},
		{give: "<unparseable URL>", want: ""},
		{give: "", want: ""},
	} {
		if got := nodeAddr(tt.give); got != tt.want {
			t.Errorf("nodeAddr(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}
