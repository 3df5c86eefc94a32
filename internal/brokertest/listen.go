package brokertest

import (
	"net"
	"sync"
	"testing"
)

// Listen stands in for a node that is not a broker, or not a working one:
// it accepts connections on loopback until the test ends, hands each to
// serve and closes it when serve returns, and reports each accept on
// accepted. serve must return once the test ends.
func Listen(t testing.TB, serve func(net.Conn)) (addr string, accepted <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan struct{}, 100)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case acc <- struct{}{}:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String(), acc
}
