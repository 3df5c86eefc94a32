package brokertest

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// frame returns an AMQP body frame with a payload of size bytes.
func frame(size int) []byte { return typedFrame(frameBody, size) }

// typedFrame returns an AMQP frame of type kind with a payload of size
// bytes.
func typedFrame(kind byte, size int) []byte {
	f := []byte{kind, 0, 1}
	f = binary.BigEndian.AppendUint32(f, uint32(size))
	f = append(f, bytes.Repeat([]byte{'x'}, size)...)
	return append(f, 0xCE)
}

func TestFrameCursorCutsHalfWayThroughAPayload(t *testing.T) {
	heartbeat := []byte{8, 0, 0, 0, 0, 0, 0, 0xCE}
	two := append(append(bytes.Clone(heartbeat), heartbeat...), frame(100)...)
	for _, tt := range []struct {
		name   string
		give   [][]byte // chunks as read
		want   int      // index of the chunk cut
		wantAt int      // offset of the cut in it
	}{
		{"one frame", [][]byte{frame(100)}, 0, 7 + 50},
		{"after heartbeats", [][]byte{two}, 0, 16 + 7 + 50},
		{"payload split", [][]byte{frame(100)[:20], frame(100)[20:]}, 1, 7 + 50 - 20},
		{"header split", [][]byte{frame(10)[:3], frame(10)[3:]}, 1, 4 + 5},
		{"payload of 1 skipped", [][]byte{append(frame(1), frame(4)...)}, 0, 9 + 7 + 2},
		{"only heartbeats", [][]byte{heartbeat, heartbeat}, -1, 0},
		{"method frame skipped", [][]byte{append(typedFrame(1, 40), frame(4)...)}, 0, 48 + 7 + 2},
		{"content header cut", [][]byte{typedFrame(frameHeader, 20)}, 0, 7 + 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c frameCursor
			got, gotAt := -1, 0
			for i, chunk := range tt.give {
				if at := c.advance(chunk, true); at >= 0 {
					got, gotAt = i, at
					break
				}
			}
			if got != tt.want || gotAt != tt.wantAt {
				t.Errorf("advance(%d chunks) cut chunk %d at %d, want chunk %d at %d", len(tt.give), got, gotAt, tt.want, tt.wantAt)
			}
		})
	}
}

func TestFrameCursorFollowsFramesAcrossChunks(t *testing.T) {
	stream := append(append(frame(3), frame(70000)...), frame(5)...)
	var c frameCursor
	for i := 0; i < len(stream); i += 1000 {
		c.advance(stream[i:min(i+1000, len(stream))], false)
	}
	if c.left != 0 || c.headN != 0 {
		t.Errorf("after whole frames the cursor is at left=%d headN=%d, want a frame boundary", c.left, c.headN)
	}
	// Resuming after a cut that was not taken keeps the boundaries.
	c = frameCursor{}
	at := c.advance(stream, true)
	c.advance(stream[at:], false)
	if c.left != 0 || c.headN != 0 {
		t.Errorf("after a cut not taken the cursor is at left=%d headN=%d, want a frame boundary", c.left, c.headN)
	}
}
