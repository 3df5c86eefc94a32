package brokertest

import (
	"encoding/binary"
	"math"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TableReader builds AMQP header tables from fuzz input: values of every
// type amqp091-go decodes from the wire, tables and arrays nested as deep
// as the input says, warren's numbers written as text.
type TableReader struct {
	b     []byte
	nodes int // values made so far, to bound the work per input
}

// NewTableReader reads tables and values from b.
func NewTableReader(b []byte) *TableReader { return &TableReader{b: b} }

// Byte returns the next byte, or 0 once b is used up.
func (r *TableReader) Byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// Bytes returns the next n bytes, fewer once b is used up.
func (r *TableReader) Bytes(n int) []byte {
	n = min(n, len(r.b))
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *TableReader) uint64() uint64 {
	var p [8]byte
	copy(p[:], r.Bytes(8))
	return binary.LittleEndian.Uint64(p[:])
}

// String returns a string of up to 39 bytes, any bytes.
func (r *TableReader) String() string { return string(r.Bytes(int(r.Byte() % 40))) }

// Table returns a table of up to 7 fields; depth bounds the nesting.
func (r *TableReader) Table(depth int) amqp.Table {
	t := amqp.Table{}
	for n := int(r.Byte() % 8); n > 0 && len(r.b) > 0; n-- {
		t[r.String()] = r.Value(depth)
	}
	return t
}

// Value returns a value of any type a table may hold; depth bounds the
// nesting of tables and arrays.
func (r *TableReader) Value(depth int) any {
	r.nodes++
	if r.nodes > 2000 {
		return nil
	}
	switch kind := r.Byte() % 18; kind {
	case 0:
		return nil
	case 1:
		return r.Byte()&1 == 1
	case 2:
		return int8(r.Byte())
	case 3:
		return uint8(r.Byte())
	case 4:
		return int16(r.uint64())
	case 5:
		return uint16(r.uint64())
	case 6:
		return int32(r.uint64())
	case 7:
		return uint32(r.uint64())
	case 8:
		return int64(r.uint64())
	case 9:
		return math.Float32frombits(uint32(r.uint64()))
	case 10:
		return math.Float64frombits(r.uint64())
	case 11:
		return amqp.Decimal{Scale: r.Byte(), Value: int32(r.uint64())}
	case 12:
		return r.String()
	case 13:
		return []byte(r.String())
	case 14:
		return time.Unix(int64(r.uint64()%(1<<40)), 0)
	case 15:
		if depth > 0 {
			return r.Table(depth - 1)
		}
	case 16:
		if depth > 0 {
			var a []any
			for n := int(r.Byte() % 5); n > 0; n-- {
				a = append(a, r.Value(depth-1))
			}
			return a
		}
	case 17:
		return strconv.FormatInt(int64(r.uint64()), 10)
	}
	return r.String()
}
