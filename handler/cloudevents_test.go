package handler

import (
	"context"
	"encoding/base64"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap/zaptest"

	"github.com/warren-mq/warren/broker"
	"github.com/warren-mq/warren/internal/brokertest"
	"github.com/warren-mq/warren/worker"
)

// specTime is the time of the spec's examples.
var specTime = time.Date(2018, 4, 5, 3, 56, 24, 0, time.UTC)

// specEvent returns the application properties of the spec's binary-mode
// example (AMQP binding, 3.1.4), under prefix, with more.
func specEvent(prefix string, more amqp.Table) amqp.Table {
	t := amqp.Table{
		prefix + "specversion": "1.0",
		prefix + "type":        "com.example.someevent",
		prefix + "time":        "2018-04-05T03:56:24Z",
		prefix + "id":          "1234-1234-1234",
		prefix + "source":      "/mycontext/subcontext",
	}
	maps.Copy(t, more)
	return t
}

const structuredBody = `{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","id":"A234-1234-1234",` +
	`"time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"datacontenttype":"application/json","data":{"appinfoA":"abc"}}`

// TestCloudEventRequest: a CloudEvent in binary mode reaches the endpoint
// with its attributes as ce- headers (either property prefix, AMQP types
// in their canonical string form, values percent-encoded) and its
// content type as the Content-Type; one in structured mode as it is; a
// message that is none as it always was.
func TestCloudEventRequest(t *testing.T) {
	verifyNoLeaks(t)
	for _, tt := range []struct {
		name string
		give *worker.Message
		want map[string]string // "" for a header that must be absent
		// wantCE is how many ce- headers the request has.
		wantCE int
	}{
		{
			name: "binary, the spec's example",
			give: &worker.Message{
				Body: []byte(`{"a":1}`), ContentType: "application/json; charset=utf-8", MessageID: "m-1", Attempt: 1,
				Headers: specEvent("cloudEvents:", amqp.Table{"x-tenant": "acme"}),
			},
			want: map[string]string{
				"ce-specversion":                 "1.0",
				"ce-type":                        "com.example.someevent",
				"ce-time":                        "2018-04-05T03:56:24Z",
				"ce-id":                          "1234-1234-1234",
				"ce-source":                      "/mycontext/subcontext",
				"Content-Type":                   "application/json; charset=utf-8",
				"ce-datacontenttype":             "",
				"X-Warren-Message-Id":            "m-1",
				"X-Warren-Attempt":               "1",
				"X-Warren-Header-X-Tenant":       "acme",
				"X-Warren-Header-Cloudevents_id": "",
			},
			wantCE: 5,
		},
		{
			name: "binary, the JMS form cloudEvents_",
			give: &worker.Message{ContentType: "text/plain", Headers: specEvent("cloudEvents_", nil)},
			want: map[string]string{
				"ce-specversion":                 "1.0",
				"ce-id":                          "1234-1234-1234",
				"ce-source":                      "/mycontext/subcontext",
				"Content-Type":                   "text/plain",
				"X-Warren-Header-Cloudevents_id": "",
				"X-Warren-Header-Cloudevents_specversion": "",
			},
			wantCE: 5,
		},
		{
			name:   "binary, both forms agreeing",
			give:   &worker.Message{Headers: specEvent("cloudEvents:", specEvent("cloudEvents_", amqp.Table{"cloudEvents_subject": "s"}))},
			want:   map[string]string{"ce-id": "1234-1234-1234", "ce-subject": "s"},
			wantCE: 6,
		},
		{
			name: "binary, AMQP types and extensions",
			give: &worker.Message{Headers: specEvent("cloudEvents:", amqp.Table{
				"cloudEvents:time":          specTime,
				"cloudEvents:id":            []byte("bytes-id"), // a string attribute: its text
				"cloudEvents:comexampleint": int32(-7),
				"cloudEvents:bigint":        int64(42),
				"cloudEvents:flag":          true,
				"cloudEvents:blob":          []byte{0, 1, 2, 0xff}, // an extension: Binary, in base64
				"cloudEvents:dataschema":    "https://example.com/schema.json",
				"cloudEvents:gone":          nil, // void: absent
			})},
			want: map[string]string{
				"ce-time":          "2018-04-05T03:56:24Z",
				"ce-id":            "bytes-id",
				"ce-comexampleint": "-7",
				"ce-bigint":        "42",
				"ce-flag":          "true",
				"ce-blob":          base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 0xff}),
				"ce-dataschema":    "https://example.com/schema.json",
				"ce-gone":          "",
				"Content-Type":     "", // no datacontenttype: none
			},
			wantCE: 10,
		},
		{
			name: "binary, percent-encoded values",
			give: &worker.Message{Headers: specEvent("cloudEvents:", amqp.Table{
				"cloudEvents:subject": "Euro \u20ac \U0001F600",
				"cloudEvents:note":    `50% "off"`,
			})},
			want: map[string]string{
				"ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80", // the HTTP binding's example
				"ce-note":    "50%25%20%22off%22",
			},
			wantCE: 7,
		},
		{
			name:   "binary, datacontenttype as a property",
			give:   &worker.Message{Headers: specEvent("cloudEvents:", amqp.Table{"cloudEvents:datacontenttype": "application/xml"})},
			want:   map[string]string{"Content-Type": "application/xml", "ce-datacontenttype": ""},
			wantCE: 5,
		},
		{
			name:   "binary, the content-type property wins",
			give:   &worker.Message{ContentType: "application/json", Headers: specEvent("cloudEvents:", amqp.Table{"cloudEvents:datacontenttype": "application/xml"})},
			want:   map[string]string{"Content-Type": "application/json", "ce-datacontenttype": ""},
			wantCE: 5,
		},
		{
			name: "structured, passed as it is",
			give: &worker.Message{
				Body: []byte(structuredBody), ContentType: "application/cloudevents+json; charset=utf-8",
				Headers: amqp.Table{"cloudEvents_id": "A234-1234-1234", "x-tenant": "acme"},
			},
			want: map[string]string{
				"Content-Type":                   "application/cloudevents+json; charset=utf-8",
				"X-Warren-Header-Cloudevents_id": "",
				"X-Warren-Header-X-Tenant":       "acme",
			},
		},
		{
			name: "structured, a format warren does not read",
			give: &worker.Message{Body: []byte{0x0a, 0xff}, ContentType: "application/cloudevents+avro"},
			want: map[string]string{"Content-Type": "application/cloudevents+avro"},
		},
		{
			name: "not a CloudEvent: no specversion",
			give: &worker.Message{Body: []byte("x"), Headers: amqp.Table{"cloudEvents_id": "1", "cloudEvents:type": "t"}},
			want: map[string]string{
				"Content-Type":                   "application/octet-stream",
				"X-Warren-Header-Cloudevents_id": "1",
				"ce-id":                          "",
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recordingServer(t, http.StatusNoContent)
			if err := newHTTP(t, srv.URL).Handle(context.Background(), tt.give); err != nil {
				t.Fatalf("Handle() = %v, want nil", err)
			}
			r := <-reqs
			if string(r.body) != string(tt.give.Body) {
				t.Errorf("server got body %.60q, want %.60q", r.body, tt.give.Body)
			}
			for k, want := range tt.want {
				if got := r.header.Values(k); want == "" && len(got) != 0 || want != "" && (len(got) != 1 || got[0] != want) {
					t.Errorf("server got %s: %q, want %q", k, got, want)
				}
			}
			ce := 0
			for k := range r.header {
				if hasPrefixFold(k, "ce-") {
					ce++
				}
			}
			if ce != tt.wantCE {
				t.Errorf("server got %d ce- headers, want %d: %v", ce, tt.wantCE, r.header)
			}
		})
	}
}

// TestCloudEventInvalid: a message that claims to be a CloudEvent and
// breaks the spec's rules is dead at once, with a reason that names the
// attribute, and never posted.
func TestCloudEventInvalid(t *testing.T) {
	verifyNoLeaks(t)
	without := func(name string) amqp.Table {
		t := specEvent("cloudEvents:", nil)
		delete(t, "cloudEvents:"+name)
		return t
	}
	with := func(k string, v any) amqp.Table { return specEvent("cloudEvents:", amqp.Table{k: v}) }
	structured := func(body string) *worker.Message {
		return &worker.Message{Body: []byte(body), ContentType: "application/cloudevents+json"}
	}
	for _, tt := range []struct {
		name string
		give *worker.Message
		want string
	}{
		{"no id", &worker.Message{Headers: without("id")}, "required attribute id missing"},
		{"no source", &worker.Message{Headers: without("source")}, "required attribute source missing"},
		{"no type", &worker.Message{Headers: without("type")}, "required attribute type missing"},
		{"empty id", &worker.Message{Headers: with("cloudEvents:id", "")}, "required attribute id missing"},
		{"void id", &worker.Message{Headers: with("cloudEvents_id", nil)}, ""}, // the other form still has it: valid
		{"specversion 0.3", &worker.Message{Headers: with("cloudEvents:specversion", "0.3")}, `attribute specversion: "0.3", want "1.0"`},
		{"specversion void", &worker.Message{Headers: with("cloudEvents:specversion", nil)}, "required attribute specversion missing"},
		{"upper-case name", &worker.Message{Headers: with("cloudEvents:myExt", "v")}, `attribute name "myExt"`},
		{"name with a dash", &worker.Message{Headers: with("cloudEvents_my-ext", "v")}, `attribute name "my-ext"`},
		{"time not RFC 3339", &worker.Message{Headers: with("cloudEvents:time", "yesterday")}, "attribute time"},
		{"dataschema relative", &worker.Message{Headers: with("cloudEvents:dataschema", "/schema")}, "attribute dataschema"},
		{"subject empty", &worker.Message{Headers: with("cloudEvents:subject", "")}, "attribute subject"},
		{"control character", &worker.Message{Headers: with("cloudEvents:subject", "a\nb")}, "attribute subject: control character"},
		{"not UTF-8", &worker.Message{Headers: with("cloudEvents:subject", "caf\xe9")}, "attribute subject: not UTF-8"},
		{"named data", &worker.Message{Headers: with("cloudEvents:data", "v")}, `attribute name "data": reserved`},
		{"integer past 32 bits", &worker.Message{Headers: with("cloudEvents:big", int64(1)<<31)}, "attribute big: 2147483648 is outside"},
		{"unsigned past 32 bits", &worker.Message{Headers: with("cloudEvents:big", uint32(1)<<31)}, "attribute big: 2147483648 is outside"},
		{"integer at the bound", &worker.Message{Headers: with("cloudEvents:small", int64(-1)<<31)}, ""},
		{"noncharacter", &worker.Message{Headers: with("cloudEvents:subject", "a\uFFFEb")}, "attribute subject: noncharacter U+FFFE"},
		{"a table", &worker.Message{Headers: with("cloudEvents:nested", amqp.Table{"a": 1})}, "attribute nested: a table"},
		{"an array", &worker.Message{Headers: with("cloudEvents:list", []any{"a"})}, "attribute list: an array"},
		{"bad datacontenttype", &worker.Message{ContentType: "not a type", Headers: specEvent("cloudEvents:", nil)}, "attribute datacontenttype"},
		{"forms disagree", &worker.Message{Headers: with("cloudEvents_id", "other")}, "attribute id: given twice"},
		{"structured, not JSON", structured("<event/>"), "structured event not a JSON object"},
		{"structured, no type", structured(`{"specversion":"1.0","id":"1","source":"/s"}`), "required attribute type missing"},
		{"structured, source a number", structured(`{"specversion":"1.0","id":"1","source":5,"type":"t"}`), ""},
		{"structured, id an object", structured(`{"specversion":"1.0","id":{},"source":"/s","type":"t"}`), "attribute id: an object"},
		{"structured, bad name", structured(`{"specversion":"1.0","id":"1","source":"/s","type":"t","Ext":1}`), `attribute name "Ext"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
			err := newHTTP(t, srv.URL).Handle(context.Background(), tt.give)
			if tt.want == "" {
				if err != nil || hits.Load() != 1 {
					t.Fatalf("Handle() = %v after %d requests, want nil after 1", err, hits.Load())
				}
				return
			}
			if worker.OutcomeOf(err) != worker.Dead || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "cloudevent: ") {
				t.Errorf("Handle() = %v (%v), want dead with a reason naming %q", err, worker.OutcomeOf(err), tt.want)
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("endpoint got %d requests, want none", n)
			}
		})
	}
}

// sdkServer is an endpoint that reads each request with the CloudEvents Go
// SDK and hands on the valid events it got; it answers 400 to anything else.
func sdkServer(t *testing.T) (url string, events <-chan sdkEvent) {
	t.Helper()
	ch := make(chan sdkEvent, 100)
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if readSDKEvent(w, r, ch) {
			w.WriteHeader(http.StatusAccepted)
		}
	})
	return srv.URL, ch
}

// readSDKEvent reads r with the CloudEvents Go SDK and sends the event to
// events if it is a valid one; otherwise it answers 400 and reports false.
func readSDKEvent(w http.ResponseWriter, r *http.Request, events chan<- sdkEvent) bool {
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err == nil {
		err = e.Validate()
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	events <- sdkEvent{
		id: e.ID(), source: e.Source(), typ: e.Type(), subject: e.Subject(), time: e.Time(),
		dataContentType: e.DataContentType(), data: string(e.Data()), extensions: e.Extensions(),
	}
	return true
}

// sdkEvent is what the SDK read.
type sdkEvent struct {
	id, source, typ, subject, dataContentType, data string
	time                                            time.Time
	extensions                                      map[string]any
}

// checkSDKEvent fails unless got is the event want describes.
func checkSDKEvent(t *testing.T, got, want sdkEvent) {
	t.Helper()
	if got.id != want.id || got.source != want.source || got.typ != want.typ || got.subject != want.subject ||
		!got.time.Equal(want.time) || got.dataContentType != want.dataContentType || got.data != want.data {
		t.Errorf("SDK read %+v, want %+v", got, want)
	}
	for k, v := range want.extensions {
		if got.extensions[k] != v {
			t.Errorf("SDK read extension %s = %v (%T), want %v", k, got.extensions[k], got.extensions[k], v)
		}
	}
}

// TestCloudEventSDKReceives: the CloudEvents Go SDK, as the endpoint,
// reads what the handler posts as the event the message carries, in
// binary mode from either prefix and in structured mode.
func TestCloudEventSDKReceives(t *testing.T) {
	verifyNoLeaks(t)
	url, events := sdkServer(t)
	h := newHTTP(t, url)
	binary := sdkEvent{
		id: "1234-1234-1234", source: "/mycontext/subcontext", typ: "com.example.someevent", subject: "orders/42",
		time: specTime, dataContentType: "application/json", data: `{"order":42}`,
		extensions: map[string]any{"comexampleext": "-7", "tenant": "acme"},
	}
	for _, prefix := range []string{"cloudEvents:", "cloudEvents_"} {
		m := &worker.Message{Body: []byte(binary.data), ContentType: binary.dataContentType, Headers: specEvent(prefix, amqp.Table{
			prefix + "time": specTime, prefix + "subject": "orders/42", prefix + "comexampleext": int32(-7), prefix + "tenant": "acme",
		})}
		if err := h.Handle(context.Background(), m); err != nil {
			t.Fatalf("Handle(binary, %s) = %v, want nil", prefix, err)
		}
		checkSDKEvent(t, <-events, binary)
	}
	m := &worker.Message{Body: []byte(structuredBody), ContentType: "application/cloudevents+json; charset=utf-8"}
	if err := h.Handle(context.Background(), m); err != nil {
		t.Fatalf("Handle(structured) = %v, want nil", err)
	}
	checkSDKEvent(t, <-events, sdkEvent{
		id: "A234-1234-1234", source: "/mycontext", typ: "com.example.someevent", time: time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC),
		dataContentType: "application/json", data: `{"appinfoA":"abc"}`,
		extensions: map[string]any{"comexampleextension1": "value", "comexampleothervalue": int32(5)},
	})
}

// TestCloudEventReplyOf maps the HTTP binding's example responses, and
// others, to the AMQP reply's properties and content type.
func TestCloudEventReplyOf(t *testing.T) {
	specHeaders := func(more ...string) http.Header {
		h := http.Header{}
		for _, kv := range [][2]string{
			{"ce-specversion", "1.0"}, {"ce-type", "com.example.someevent"}, {"ce-time", "2018-04-05T03:56:24Z"},
			{"ce-id", "1234-1234-1234"}, {"ce-source", "/mycontext/subcontext"}, {"Content-Type", "application/json; charset=utf-8"},
		} {
			h.Set(kv[0], kv[1])
		}
		for i := 0; i+1 < len(more); i += 2 {
			if more[i+1] == "" {
				h.Del(more[i])
				continue
			}
			h.Add(more[i], more[i+1])
		}
		return h
	}
	specProps := func(more ...any) amqp.Table {
		t := amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:type": "com.example.someevent", "cloudEvents:time": "2018-04-05T03:56:24Z",
			"cloudEvents:id": "1234-1234-1234", "cloudEvents:source": "/mycontext/subcontext",
		}
		for i := 0; i+1 < len(more); i += 2 {
			t[more[i].(string)] = more[i+1]
		}
		return t
	}
	for _, tt := range []struct {
		name      string
		header    http.Header
		body      string
		wantOK    bool
		want      CloudEventReply
		wantError string
	}{
		{
			name: "binary, the spec's example", header: specHeaders(), body: `{}`, wantOK: true,
			want: CloudEventReply{Properties: specProps(), ContentType: "application/json; charset=utf-8"},
		},
		{
			name: "binary, percent-encoded, lower-case hex too", header: specHeaders("ce-subject", "Euro%20%E2%82%AC%20%f0%9f%98%80", "Ce-Comexampleext", "a%25b"), wantOK: true,
			want: CloudEventReply{Properties: specProps("cloudEvents:subject", "Euro \u20ac \U0001F600", "cloudEvents:comexampleext", "a%b"), ContentType: "application/json; charset=utf-8"},
		},
		{
			name: "binary, a double-quoted value of an older sender", header: specHeaders("ce-subject", `"a \"b\" c"`), wantOK: true,
			want: CloudEventReply{Properties: specProps("cloudEvents:subject", `a "b" c`), ContentType: "application/json; charset=utf-8"},
		},
		{
			name: "binary, no Content-Type", header: specHeaders("Content-Type", ""), wantOK: true,
			want: CloudEventReply{Properties: specProps()},
		},
		{
			name: "binary, ce-datacontenttype instead of Content-Type", header: specHeaders("Content-Type", "", "ce-datacontenttype", "text/plain"), wantOK: true,
			want: CloudEventReply{Properties: specProps(), ContentType: "text/plain"},
		},
		{
			name: "structured, the spec's example", header: http.Header{"Content-Type": {"application/cloudevents+json; charset=utf-8"}}, body: structuredBody, wantOK: true,
			want: CloudEventReply{ContentType: "application/cloudevents+json; charset=utf-8"},
		},
		{
			name: "not an event", header: http.Header{"Content-Type": {"application/json"}, "Ce-Id": {"1"}}, body: `{}`, wantOK: false,
		},
		{
			name: "binary, an overlong UTF-8 encoding", header: specHeaders("ce-subject", "%C0%A0"), wantOK: true, wantError: "attribute subject: not UTF-8",
		},
		{
			name: "binary, a broken escape", header: specHeaders("ce-subject", "50%"), wantOK: true, wantError: "attribute subject: bad percent-encoding",
		},
		{
			name: "binary, no id", header: specHeaders("ce-id", ""), wantOK: true, wantError: "required attribute id missing",
		},
		{
			name: "binary, a header twice", header: specHeaders("ce-type", "other"), wantOK: true, wantError: "attribute type: 2 headers",
		},
		{
			name: "binary, a bad name", header: specHeaders("ce-my_ext", "v"), wantOK: true, wantError: `attribute name "my_ext"`,
		},
		{
			name: "binary, named data", header: specHeaders("ce-data", "v"), wantOK: true, wantError: `attribute name "data": reserved`,
		},
		{
			name: "structured, no source", header: http.Header{"Content-Type": {"application/cloudevents+json"}}, body: `{"specversion":"1.0","id":"1","type":"t"}`,
			wantOK: true, wantError: "required attribute source missing",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := CloudEventReplyOf(tt.header, []byte(tt.body))
			if ok != tt.wantOK {
				t.Fatalf("CloudEventReplyOf(%v) ok = %v, want %v", tt.header, ok, tt.wantOK)
			}
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Errorf("CloudEventReplyOf(%v) = %v, want an error naming %q", tt.header, err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("CloudEventReplyOf(%v) = %v, want nil", tt.header, err)
			}
			if got.ContentType != tt.want.ContentType || !maps.Equal(got.Properties, tt.want.Properties) {
				t.Errorf("CloudEventReplyOf(%v) = %+v, want %+v", tt.header, got, tt.want)
			}
		})
	}
}

// TestCloudEventRoundTrip: the headers the handler posts for a message,
// read back as a reply, give the message's attributes under the
// cloudEvents: prefix, whichever prefix it came with, in their string form.
func TestCloudEventRoundTrip(t *testing.T) {
	verifyNoLeaks(t)
	srv, reqs := recordingServer(t, http.StatusNoContent)
	h := newHTTP(t, srv.URL)
	for _, prefix := range []string{"cloudEvents:", "cloudEvents_"} {
		m := &worker.Message{ContentType: "application/json", Headers: specEvent(prefix, amqp.Table{
			prefix + "time": specTime, prefix + "subject": `Euro € "50%"`, prefix + "n": int64(5), prefix + "ok": false, "x-other": "o",
		})}
		if err := h.Handle(context.Background(), m); err != nil {
			t.Fatalf("Handle() = %v", err)
		}
		r := <-reqs
		got, ok, err := CloudEventReplyOf(r.header, r.body)
		want := amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:type": "com.example.someevent", "cloudEvents:time": "2018-04-05T03:56:24Z",
			"cloudEvents:id": "1234-1234-1234", "cloudEvents:source": "/mycontext/subcontext",
			"cloudEvents:subject": `Euro € "50%"`, "cloudEvents:n": "5", "cloudEvents:ok": "false",
		}
		if !ok || err != nil || got.ContentType != "application/json" || !maps.Equal(got.Properties, want) {
			t.Errorf("%s: CloudEventReplyOf(the request's headers) = %+v, %v, %v, want %+v", prefix, got, ok, err, want)
		}
	}
}

func TestPercentEncode(t *testing.T) {
	for _, tt := range []struct{ give, want string }{
		{"", ""},
		{"plain-ASCII_~!#$&'()*+,/:;<=>?@[\\]^`{|}", "plain-ASCII_~!#$&'()*+,/:;<=>?@[\\]^`{|}"},
		{"Euro \u20ac \U0001F600", "Euro%20%E2%82%AC%20%F0%9F%98%80"},
		{`a "b" 100%`, "a%20%22b%22%20100%25"},
		{"tab\there\x7f", "tab%09here%7F"},
	} {
		got := percentEncode(tt.give)
		if got != tt.want {
			t.Errorf("percentEncode(%q) = %q, want %q", tt.give, got, tt.want)
		}
		if back, err := percentDecode(got); strings.ContainsAny(tt.give, "\t\x7f") == (err == nil) || err == nil && back != tt.give {
			t.Errorf("percentDecode(%q) = %q, %v, want %q (an error for control characters)", got, back, err, tt.give)
		}
	}
}

// runWorker runs a worker that consumes q with h against the test broker
// until the test ends, and waits until it is ready.
func runWorker(t *testing.T, q string, h worker.Handler) {
	t.Helper()
	w, err := worker.New(worker.Config{
		Dialer:   &broker.Dialer{URLs: []string{brokertest.URL()}, Name: brokertest.Name(t)},
		Topology: broker.Topology{Queue: q, Declare: true},
		Handler:  h,
		Logger:   zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker.Run = %v, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Error("worker did not stop within a minute")
		}
	})
	brokertest.WaitFor(t, 20*time.Second, "worker ready", func() bool { return w.Ready() == nil })
}

// publish publishes ps to q, persistent and confirmed.
func publish(t *testing.T, q string, ps ...amqp.Publishing) {
	t.Helper()
	ch := brokertest.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	for _, p := range ps {
		p.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, p)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if !dc.Wait() {
			t.Fatal("publish: broker did not confirm")
		}
	}
}

// TestCloudEventThroughBroker: through the broker and the worker, a
// binary-mode message reaches the CloudEvents Go SDK as the event it
// carries (id, source, type, subject, time from an AMQP timestamp, an
// extension from an AMQP integer, data), a structured one too; one that
// lacks a required attribute is dead-lettered at once with a reason
// naming it; a plain message is posted as always.
func TestCloudEventThroughBroker(t *testing.T) {
	verifyNoLeaks(t)
	events := make(chan sdkEvent, 10)
	plain := make(chan request, 10)
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("ce-specversion") == "" && !hasPrefixFold(r.Header.Get("Content-Type"), "application/cloudevents") {
			body, _ := io.ReadAll(r.Body)
			plain <- request{method: r.Method, header: r.Header.Clone(), body: body}
			return
		}
		readSDKEvent(w, r, events)
	})
	q := brokertest.Queue(t)
	h := NewHTTP(srv.URL, 4)
	t.Cleanup(h.client.CloseIdleConnections)
	runWorker(t, q, h)

	publish(t, q,
		amqp.Publishing{ContentType: "application/json", Body: []byte(`{"order":42}`), Headers: amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:id": "ev-binary", "cloudEvents:source": "/shop/orders",
			"cloudEvents:type": "com.example.order.created", "cloudEvents:subject": "orders/42",
			"cloudEvents:time": specTime, "cloudEvents:priority": int32(3),
		}},
		amqp.Publishing{ContentType: "application/cloudevents+json", Body: []byte(structuredBody)},
		amqp.Publishing{ContentType: "text/plain", Body: []byte("no source"), Headers: amqp.Table{
			"cloudEvents_specversion": "1.0", "cloudEvents_id": "ev-bad", "cloudEvents_type": "com.example.order.created",
		}},
		amqp.Publishing{ContentType: "text/plain", MessageId: "p-1", Body: []byte("plain"), Headers: amqp.Table{"cloudEvents_id": "not an event"}},
	)

	got := map[string]sdkEvent{}
	deadline := time.After(20 * time.Second)
	for len(got) < 2 {
		select {
		case e := <-events:
			got[e.id] = e
		case <-deadline:
			t.Fatalf("the SDK got %d events in 20s, want 2: %v", len(got), got)
		}
	}
	checkSDKEvent(t, got["ev-binary"], sdkEvent{
		id: "ev-binary", source: "/shop/orders", typ: "com.example.order.created", subject: "orders/42", time: specTime,
		dataContentType: "application/json", data: `{"order":42}`, extensions: map[string]any{"priority": "3"},
	})
	checkSDKEvent(t, got["A234-1234-1234"], sdkEvent{
		id: "A234-1234-1234", source: "/mycontext", typ: "com.example.someevent", time: time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC),
		dataContentType: "application/json", data: `{"appinfoA":"abc"}`, extensions: map[string]any{"comexampleextension1": "value"},
	})

	select {
	case r := <-plain:
		if string(r.body) != "plain" || r.header.Get("Content-Type") != "text/plain" || r.header.Get("X-Warren-Message-Id") != "p-1" ||
			r.header.Get("X-Warren-Header-Cloudevents_id") != "not an event" || r.header.Get("ce-id") != "" {
			t.Errorf("the plain message arrived as %q with %v, want it as always", r.body, r.header)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the plain message did not arrive in 20s")
	}

	brokertest.WaitFor(t, 20*time.Second, "a message in "+q+".dead", func() bool { return brokertest.Ready(t, q+".dead") >= 1 })
	dead := brokertest.Get(t, q+".dead", 10)
	if len(dead) != 1 || string(dead[0].Body) != "no source" {
		t.Fatalf("%s.dead holds %d messages, want the one without a source", q, len(dead))
	}
	reason, _ := dead[0].Headers[broker.HeaderReason].(string)
	if !strings.Contains(reason, "required attribute source missing") {
		t.Errorf("dead reason = %q, want it to name the missing source", reason)
	}
	if id, _ := dead[0].Headers["cloudEvents_id"].(string); id != "ev-bad" {
		t.Errorf("dead copy's cloudEvents_id = %q, want the event's properties kept", id)
	}
	if len(events) != 0 || len(plain) != 0 {
		t.Errorf("endpoint got %d more events and %d more plain requests, want none", len(events), len(plain))
	}
}

// FuzzCloudEventCoding: whatever an attribute holds, its header value is
// printable ASCII without space, and a valid string decodes back to
// itself; whatever a response holds, reading it as a reply does not
// panic.
func FuzzCloudEventCoding(f *testing.F) {
	f.Add("Euro \u20ac \U0001F600", []byte(structuredBody))
	f.Add(`"a \"b\"" %C0%A0 %`, []byte(`{"specversion":"1.0","id":{}}`))
	f.Add("", []byte("null"))
	f.Fuzz(func(t *testing.T, s string, body []byte) {
		enc := percentEncode(s)
		for i := 0; i < len(enc); i++ {
			if enc[i] <= ' ' || enc[i] >= 0x7f {
				t.Fatalf("percentEncode(%q) = %q, holds byte %#x", s, enc, enc[i])
			}
		}
		if checkString(s) == nil {
			if back, err := percentDecode(enc); err != nil || back != s {
				t.Fatalf("percentDecode(percentEncode(%q)) = %q, %v", s, back, err)
			}
		}
		h := http.Header{"Ce-Specversion": {"1.0"}, "Ce-Id": {s}, "Ce-Source": {"/s"}, "Ce-Type": {"t"}}
		_, _, _ = CloudEventReplyOf(h, body)
		_, _, _ = CloudEventReplyOf(http.Header{"Content-Type": {"application/cloudevents+json"}}, body)
	})
}
