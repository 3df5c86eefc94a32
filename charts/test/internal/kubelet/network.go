package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Network is the pod network of one test: a Linux bridge on the host with
// the gateway address, and per pod a network namespace joined to the bridge
// by a veth pair, with an address of its own from the bridge's prefix. Pods
// reach each other and the host's gateway address; nothing is routed
// further (no forwarding, no NAT), so a host service the pods need listens
// on, or is forwarded from, the gateway address.
type Network struct {
	bridge  string
	prefix  netip.Prefix // the gateway's address and the pods' prefix
	mu      sync.Mutex
	next    netip.Addr // the next pod address to hand out
	sandbox map[string]*Sandbox
}

// NewNetwork creates the bridge with the gateway address prefix (say
// 10.234.0.1/16). Close removes it with every sandbox left.
func NewNetwork(ctx context.Context, prefix netip.Prefix) (*Network, error) {
	if !prefix.Addr().Is4() || prefix.Bits() > 24 {
		return nil, fmt.Errorf("pod network %s: want an IPv4 prefix of /24 or wider", prefix)
	}
	n := &Network{
		bridge:  "wrn" + randomHex(4),
		prefix:  prefix,
		next:    prefix.Addr().Next(),
		sandbox: map[string]*Sandbox{},
	}
	err := ipCommands(ctx,
		[]string{"link", "add", n.bridge, "type", "bridge"},
		[]string{"addr", "add", prefix.String(), "dev", n.bridge},
		[]string{"link", "set", n.bridge, "up"},
	)
	if err != nil {
		_ = ip(context.Background(), "link", "del", n.bridge)
		return nil, fmt.Errorf("pod network: %w", err)
	}
	return n, nil
}

// Gateway is the host's address on the pod network.
func (n *Network) Gateway() netip.Addr { return n.prefix.Addr() }

// Close removes every sandbox still there, then the bridge.
func (n *Network) Close() error {
	n.mu.Lock()
	left := make([]*Sandbox, 0, len(n.sandbox))
	for _, s := range n.sandbox {
		left = append(left, s)
	}
	n.mu.Unlock()
	var errs []error
	for _, s := range left {
		errs = append(errs, s.Remove())
	}
	errs = append(errs, ip(context.Background(), "link", "del", n.bridge))
	return errors.Join(errs...)
}

// Sandbox is one pod's network namespace: the netns named NetNS (under
// /run/netns) with eth0 at IP and lo up, the host end of its veth pair on
// the bridge.
type Sandbox struct {
	NetNS string
	IP    netip.Addr
	host  string // the veth's host end
	net   *Network
}

// Path is the namespace's file, for setns.
func (s *Sandbox) Path() string { return "/run/netns/" + s.NetNS }

// Add makes a sandbox with the next free address.
func (n *Network) Add(ctx context.Context) (*Sandbox, error) {
	n.mu.Lock()
	addr := n.next
	n.next = addr.Next()
	n.mu.Unlock()
	if !n.prefix.Contains(addr) || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return nil, fmt.Errorf("pod network %s: addresses used up", n.prefix)
	}
	id := randomHex(4)
	s := &Sandbox{NetNS: "wpod-" + id, IP: addr, host: "wv" + id, net: n}
	peer := "wp" + id
	cidr := netip.PrefixFrom(addr, n.prefix.Bits()).String()
	err := ipCommands(ctx,
		[]string{"netns", "add", s.NetNS},
		[]string{"link", "add", s.host, "type", "veth", "peer", "name", peer},
		[]string{"link", "set", peer, "netns", s.NetNS},
		[]string{"-n", s.NetNS, "link", "set", peer, "name", "eth0"},
		[]string{"-n", s.NetNS, "addr", "add", cidr, "dev", "eth0"},
		[]string{"-n", s.NetNS, "link", "set", "eth0", "up"},
		[]string{"-n", s.NetNS, "link", "set", "lo", "up"},
		[]string{"-n", s.NetNS, "route", "add", "default", "via", n.Gateway().String()},
		[]string{"link", "set", s.host, "master", n.bridge},
		[]string{"link", "set", s.host, "up"},
	)
	if err != nil {
		_ = s.remove()
		return nil, fmt.Errorf("pod sandbox: %w", err)
	}
	n.mu.Lock()
	n.sandbox[s.NetNS] = s
	n.mu.Unlock()
	return s, nil
}

// Remove deletes the namespace and the veth pair.
func (s *Sandbox) Remove() error {
	s.net.mu.Lock()
	delete(s.net.sandbox, s.NetNS)
	s.net.mu.Unlock()
	return s.remove()
}

func (s *Sandbox) remove() error {
	ctx := context.Background()
	// Deleting either end deletes the pair; the peer went with the
	// namespace if the host end is already gone.
	var errs []error
	if err := ip(ctx, "link", "del", s.host); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	if err := ip(ctx, "netns", "del", s.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func ipCommands(ctx context.Context, cmds ...[]string) error {
	for _, args := range cmds {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
