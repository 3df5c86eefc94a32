package handler

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-mq/warren/worker"
)

// CloudEvents 1.0 in the HTTP handler. A message is a CloudEvent in
// binary mode when its application properties (AMQP headers) carry
// cloudEvents:specversion, or cloudEvents_specversion (the form JMS
// clients can write), as the AMQP protocol binding has it; it is one in
// structured mode when its content type is a CloudEvents event format
// (application/cloudevents+json). Every other message is posted as it
// always was.
const (
	// CloudEventsPropertyPrefix starts the name of an application property
	// that carries a CloudEvents attribute: cloudEvents:id. Replies use it.
	CloudEventsPropertyPrefix = "cloudEvents:"
	// cloudEventsAltPrefix is the other prefix receivers accept:
	// cloudEvents_id.
	cloudEventsAltPrefix = "cloudEvents_"
	// cloudEventsHeaderPrefix starts the HTTP header of an attribute in
	// binary mode (HTTP protocol binding): ce-id.
	cloudEventsHeaderPrefix = "Ce-"
	// cloudEventsMediaType prefixes the media types of the event formats;
	// a message of one of them is passed as it is (structured mode).
	cloudEventsMediaType = "application/cloudevents"
	// cloudEventsJSON is the one event format warren reads, to validate it.
	cloudEventsJSON = "application/cloudevents+json"
	// cloudEventsSpecVersion is the version of the spec warren speaks.
	cloudEventsSpecVersion = "1.0"
)

// eventMode is how a message carries a CloudEvent, if it does.
type eventMode int

const (
	notEvent eventMode = iota
	binaryEvent
	structuredEvent
)

// cloudEventMode tells whether m is a CloudEvent and in which mode. It
// costs two map lookups for a message that is none. As the AMQP binding
// says, the content type decides first.
func cloudEventMode(m *worker.Message) eventMode {
	if hasPrefixFold(m.ContentType, cloudEventsMediaType) {
		return structuredEvent
	}
	if _, ok := m.Headers[CloudEventsPropertyPrefix+"specversion"]; ok {
		return binaryEvent
	}
	if _, ok := m.Headers[cloudEventsAltPrefix+"specversion"]; ok {
		return binaryEvent
	}
	return notEvent
}

// setCloudEventHeaders sets the Content-Type and ce- headers of the request
// that carries m, a CloudEvent in mode, and returns m without its
// cloudEvents properties, for the X-Warren-* headers. It returns an error
// naming the attribute when m claims to be a CloudEvent and is not a
// valid one.
func setCloudEventHeaders(h http.Header, m *worker.Message, mode eventMode) (*worker.Message, error) {
	switch mode {
	case structuredEvent:
		// Passed as it is; only JSON, the format every implementation
		// must speak, is read, to check it.
		if mt, _, err := mime.ParseMediaType(m.ContentType); err == nil && mt == cloudEventsJSON {
			if _, err := structuredEventAttributes(m.Body); err != nil {
				return nil, err
			}
		}
		h.Set("Content-Type", sanitizeHeaderValue(m.ContentType))
	case binaryEvent:
		attrs, err := binaryEventAttributes(m)
		if err != nil {
			return nil, err
		}
		for name, v := range attrs {
			if name == "datacontenttype" {
				// The HTTP binding: the Content-Type is the
				// datacontenttype; no ce-datacontenttype.
				h.Set("Content-Type", sanitizeHeaderValue(v))
				continue
			}
			h.Set(cloudEventsHeaderPrefix+name, percentEncode(v))
		}
	}
	return withoutCloudEventProperties(m), nil
}

// binaryEventAttributes reads the attributes of a binary-mode CloudEvent
// from m's application properties (either prefix) and its content type
// (the datacontenttype), each rendered in its canonical string form, and
// validates them.
func binaryEventAttributes(m *worker.Message) (map[string]string, error) {
	keys := make([]string, 0, 8)
	for k := range m.Headers {
		if _, ok := cloudEventAttributeName(k); ok {
			keys = append(keys, k)
		}
	}
	// In order, so that the reason of a message with two faults is the
	// same on every delivery.
	slices.Sort(keys)
	attrs := make(map[string]string, len(keys)+1)
	for _, k := range keys {
		name, _ := cloudEventAttributeName(k)
		if err := checkAttributeName(name); err != nil {
			return nil, fmt.Errorf("cloudevent: property %q: %w", k, err)
		}
		v, present, err := attributeString(name, m.Headers[k])
		if err != nil {
			return nil, fmt.Errorf("cloudevent: attribute %s: %w", name, err)
		}
		if !present {
			continue
		}
		if old, ok := attrs[name]; ok && old != v {
			return nil, fmt.Errorf("cloudevent: attribute %s: given twice, as %q and %q", name, old, v)
		}
		attrs[name] = v
	}
	// The AMQP binding: the content-type property is the datacontenttype.
	// A cloudEvents:datacontenttype property stands in when it is unset.
	if m.ContentType != "" {
		attrs["datacontenttype"] = m.ContentType
	}
	if err := validateAttributes(attrs); err != nil {
		return nil, err
	}
	return attrs, nil
}

// cloudEventAttributeName returns the attribute an application property
// carries: "id" for cloudEvents:id and cloudEvents_id.
func cloudEventAttributeName(key string) (string, bool) {
	if name, ok := strings.CutPrefix(key, CloudEventsPropertyPrefix); ok {
		return name, true
	}
	return strings.CutPrefix(key, cloudEventsAltPrefix)
}

// withoutCloudEventProperties returns m, or a copy of it without the
// properties that carry CloudEvents attributes: those travel as ce-
// headers or in the body, not again as X-Warren-Header-*.
func withoutCloudEventProperties(m *worker.Message) *worker.Message {
	n := 0
	for k := range m.Headers {
		if _, ok := cloudEventAttributeName(k); ok {
			n++
		}
	}
	if n == 0 {
		return m
	}
	c := *m
	c.Headers = make(amqp.Table, len(m.Headers)-n)
	for k, v := range m.Headers {
		if _, ok := cloudEventAttributeName(k); !ok {
			c.Headers[k] = v
		}
	}
	return &c
}

// stringAttributes are the context attributes of the spec, all of a
// string type (String, URI, URI-reference, Timestamp): an AMQP byte
// array in one of them is read as its text. In an extension it is the
// Binary type, and rendered in base64.
var stringAttributes = map[string]bool{
	"id": true, "source": true, "specversion": true, "type": true,
	"datacontenttype": true, "dataschema": true, "subject": true, "time": true,
}

// attributeString renders an attribute's AMQP value in the canonical
// string form of the CloudEvents type system: a timestamp in RFC 3339, an
// integer in decimal, a boolean as true or false, binary in base64. An
// AMQP void means the attribute is absent.
func attributeString(name string, v any) (s string, present bool, err error) {
	switch v := v.(type) {
	case nil:
		return "", false, nil
	case string:
		s = v
	case []byte:
		if !stringAttributes[name] {
			return base64.StdEncoding.EncodeToString(v), true, nil
		}
		s = string(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano), true, nil
	case bool:
		return strconv.FormatBool(v), true, nil
	case int8:
		return strconv.Itoa(int(v)), true, nil
	case uint8:
		return strconv.Itoa(int(v)), true, nil
	case int16:
		return strconv.Itoa(int(v)), true, nil
	case uint16:
		return strconv.Itoa(int(v)), true, nil
	case int32:
		return strconv.Itoa(int(v)), true, nil
	case uint32:
		return integerString(int64(v))
	case int64:
		return integerString(v)
	case float32, float64, amqp.Decimal:
		// No such CloudEvents type; its text is a fine String.
		return headerString(v), true, nil
	case amqp.Table:
		return "", false, errors.New("a table is not a CloudEvents attribute value")
	case []any:
		return "", false, errors.New("an array is not a CloudEvents attribute value")
	default:
		return "", false, fmt.Errorf("a %T is not a CloudEvents attribute value", v)
	}
	return s, true, checkString(s)
}

// integerString renders an AMQP long (or unsigned int) as the spec's
// Integer, which holds 32 bits only.
func integerString(v int64) (string, bool, error) {
	if v < math.MinInt32 || v > math.MaxInt32 {
		return "", false, fmt.Errorf("%d is outside the range of a CloudEvents Integer (32 bits)", v)
	}
	return strconv.FormatInt(v, 10), true, nil
}

// checkString checks a String value: UTF-8 (so no lone surrogate)
// without the characters the spec disallows: the control characters
// U+0000-U+001F and U+007F-U+009F, and Unicode's noncharacters.
func checkString(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	for _, r := range s {
		switch {
		case r < 0x20 || r >= 0x7f && r <= 0x9f:
			return fmt.Errorf("control character %U", r)
		case r >= 0xfdd0 && r <= 0xfdef || r&0xfffe == 0xfffe:
			return fmt.Errorf("noncharacter %U", r)
		}
	}
	return nil
}

// checkAttributeName enforces the spec's MUSTs: lower-case ASCII letters
// and digits, and not data, which event formats reserve. Its SHOULD of at
// most 20 characters is not enforced.
func checkAttributeName(name string) error {
	if name == "" {
		return errors.New("empty attribute name")
	}
	if name == "data" {
		return errors.New(`attribute name "data": reserved`)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("attribute name %q: lower-case letters and digits only", name)
		}
	}
	return nil
}

// validateAttributes checks the rules of the spec for its context
// attributes: the required ones (specversion 1.0, id, source, type)
// present and not empty, and the optional ones well formed.
func validateAttributes(attrs map[string]string) error {
	sv, ok := attrs["specversion"]
	if !ok {
		return errors.New("cloudevent: required attribute specversion missing")
	}
	if sv != cloudEventsSpecVersion {
		return fmt.Errorf("cloudevent: attribute specversion: %q, want %q", sv, cloudEventsSpecVersion)
	}
	for _, name := range []string{"id", "source", "type"} {
		if v, ok := attrs[name]; !ok || v == "" {
			return fmt.Errorf("cloudevent: required attribute %s missing", name)
		}
	}
	if _, err := url.Parse(attrs["source"]); err != nil {
		return fmt.Errorf("cloudevent: attribute source: not a URI-reference: %w", err)
	}
	if v, ok := attrs["subject"]; ok && v == "" {
		return errors.New("cloudevent: attribute subject: empty")
	}
	if v, ok := attrs["time"]; ok {
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			return fmt.Errorf("cloudevent: attribute time: %q is not an RFC 3339 timestamp", v)
		}
	}
	if v, ok := attrs["dataschema"]; ok {
		if u, err := url.Parse(v); err != nil || !u.IsAbs() {
			return fmt.Errorf("cloudevent: attribute dataschema: %q is not an absolute URI", v)
		}
	}
	if v, ok := attrs["datacontenttype"]; ok {
		if _, _, err := mime.ParseMediaType(v); err != nil {
			return fmt.Errorf("cloudevent: attribute datacontenttype: %q: %w", v, err)
		}
	}
	return nil
}

// structuredEventAttributes reads the attributes of a CloudEvent in the
// JSON event format, in their string form, and validates them.
func structuredEventAttributes(body []byte) (map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("cloudevent: structured event not a JSON object: %w", err)
	}
	names := make([]string, 0, len(raw))
	for k := range raw {
		names = append(names, k)
	}
	slices.Sort(names)
	attrs := make(map[string]string, len(raw))
	for _, name := range names {
		if name == "data" || name == "data_base64" {
			continue
		}
		if err := checkAttributeName(name); err != nil {
			return nil, fmt.Errorf("cloudevent: %w", err)
		}
		v := raw[name]
		switch {
		case string(v) == "null": // absent, as the JSON format says
		case v[0] == '"':
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, fmt.Errorf("cloudevent: attribute %s: %w", name, err)
			}
			if err := checkString(s); err != nil {
				return nil, fmt.Errorf("cloudevent: attribute %s: %w", name, err)
			}
			attrs[name] = s
		case v[0] == '{' || v[0] == '[':
			return nil, fmt.Errorf("cloudevent: attribute %s: an object or array is not a CloudEvents attribute value", name)
		default: // a number or a boolean, in its JSON text
			attrs[name] = string(v)
		}
	}
	if err := validateAttributes(attrs); err != nil {
		return nil, err
	}
	return attrs, nil
}

// percentEncode encodes an attribute value for an HTTP header as the
// HTTP binding requires: space, double quote, percent and every byte
// outside printable ASCII as %XY, of the value's UTF-8 bytes.
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	encode := func(c byte) bool { return c <= ' ' || c >= 0x7f || c == '"' || c == '%' }
	i := 0
	for i < len(s) && !encode(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, i, len(s)+16)
	copy(b, s)
	for ; i < len(s); i++ {
		if c := s[i]; encode(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// percentDecode reads a ce- header value as the HTTP binding says: a
// double-quoted string unquoted first, then one round of percent-decoding,
// whose result must be UTF-8.
func percentDecode(s string) (string, error) {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(s)-1; i++ {
			if s[i] == '\\' && i+1 < len(s)-1 {
				i++
			}
			b.WriteByte(s[i])
		}
		s = b.String()
	}
	if !strings.Contains(s, "%") {
		return s, checkString(s)
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad percent-encoding %q", s[i:])
		}
		n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad percent-encoding %q", s[i:i+3])
		}
		b = append(b, byte(n))
		i += 2
	}
	return string(b), checkString(string(b))
}

// CloudEventReply is a CloudEvent that an HTTP endpoint answered, as the
// AMQP reply that carries it: in binary mode its attributes are
// application properties and its datacontenttype the content type; in
// structured mode the body is the event and the content type its format.
type CloudEventReply struct {
	// Properties hold the attributes but datacontenttype, each named
	// CloudEventsPropertyPrefix+name (cloudEvents:id), in its canonical
	// string form: AMQP 0-9-1 timestamps keep whole seconds only, and the
	// AMQP binding allows the string form of every type. Nil in
	// structured mode.
	Properties amqp.Table
	// ContentType is the reply's AMQP content-type: the response's
	// Content-Type, which is the datacontenttype in binary mode and the
	// event format (application/cloudevents+json) in structured mode.
	ContentType string
}

// CloudEventReplyOf maps an HTTP response that is a CloudEvent, by its
// header and body, to the AMQP reply that carries it, per the HTTP and
// AMQP protocol bindings: binary mode (a ce-specversion header) turns
// each ce-<name> header into the application property cloudEvents:<name>,
// percent-decoded; structured mode (a Content-Type of an event format) is
// passed as it is. ok is false when the response is no CloudEvent: the
// reply is then mapped as any other. A response that claims to be a
// CloudEvent but is not a valid one is an error naming the attribute.
func CloudEventReplyOf(header http.Header, body []byte) (r CloudEventReply, ok bool, err error) {
	ct := header.Get("Content-Type")
	if hasPrefixFold(ct, cloudEventsMediaType) {
		if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == cloudEventsJSON {
			if _, err := structuredEventAttributes(body); err != nil {
				return CloudEventReply{}, true, err
			}
		}
		return CloudEventReply{ContentType: ct}, true, nil
	}
	if len(header.Values(cloudEventsHeaderPrefix+"specversion")) == 0 {
		return CloudEventReply{}, false, nil
	}
	attrs := make(map[string]string)
	for k, vs := range header {
		if len(k) <= len(cloudEventsHeaderPrefix) || !strings.EqualFold(k[:len(cloudEventsHeaderPrefix)], cloudEventsHeaderPrefix) {
			continue
		}
		// Header names are case-insensitive; attribute names lower-case.
		name := strings.ToLower(k[len(cloudEventsHeaderPrefix):])
		if err := checkAttributeName(name); err != nil {
			return CloudEventReply{}, true, fmt.Errorf("cloudevent: header %s: %w", k, err)
		}
		if len(vs) > 1 {
			return CloudEventReply{}, true, fmt.Errorf("cloudevent: attribute %s: %d headers, want one", name, len(vs))
		}
		v, err := percentDecode(vs[0])
		if err != nil {
			return CloudEventReply{}, true, fmt.Errorf("cloudevent: attribute %s: %w", name, err)
		}
		attrs[name] = v
	}
	// The binding forbids ce-datacontenttype beside the Content-Type;
	// without a Content-Type it is read as one.
	if ct != "" {
		attrs["datacontenttype"] = ct
	}
	if err := validateAttributes(attrs); err != nil {
		return CloudEventReply{}, true, err
	}
	r = CloudEventReply{ContentType: attrs["datacontenttype"], Properties: make(amqp.Table, len(attrs))}
	for name, v := range attrs {
		if name != "datacontenttype" {
			r.Properties[CloudEventsPropertyPrefix+name] = v
		}
	}
	return r, true, nil
}

// hasPrefixFold reports whether s begins with prefix, ignoring case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
