package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-mq/warren/internal/warrentest"
)

// rabbitBin holds the scripts of the installed RabbitMQ. Those in /usr/sbin
// switch to the rabbitmq user, its home and its Erlang cookie: a test's own
// node is started and managed with these, as root, with a home of its own.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// nodeBootTimeout bounds the start of a node; seen: 6 to 8 s on 2 cores.
const nodeBootTimeout = 90 * time.Second

// CanStartNode reports whether this machine lets a test start RabbitMQ
// nodes of its own, and says why not otherwise.
func CanStartNode() (bool, string) {
	if _, err := os.Stat(filepath.Join(rabbitBin, "rabbitmq-server")); err != nil {
		return false, "rabbitmq-server is not installed in " + rabbitBin
	}
	if _, err := exec.LookPath("epmd"); err != nil {
		return false, "epmd (Erlang) is not installed"
	}
	if os.Geteuid() != 0 {
		return false, "starting a RabbitMQ node of the test's own needs root"
	}
	return true, ""
}

// Nodes is what the RabbitMQ nodes of one test share, so that they can
// form a cluster: a home holding their Erlang cookie, and an epmd of their
// own on a port of their own. Nothing under /etc/rabbitmq is read, and the
// machine's own broker (its node, epmd and ports) is left alone.
type Nodes struct {
	dir      string // home of the nodes and of their CLI calls
	epmdPort int
	epmd     *exec.Cmd
	epmdDone chan struct{}
}

// NewNodes prepares the home and epmd of a test's nodes; everything is
// stopped and removed when the test ends, whatever its result. It skips
// the test when CanStartNode says no.
func NewNodes(t testing.TB) *Nodes {
	t.Helper()
	if ok, why := CanStartNode(); !ok {
		t.Skip(why + ": this test runs a RabbitMQ node of its own")
	}
	dir, err := os.MkdirTemp("", "warren-node-")
	if err != nil {
		t.Fatalf("node home: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cookie [20]byte
	_, _ = rand.Read(cookie[:])
	if err := os.WriteFile(filepath.Join(dir, ".erlang.cookie"), []byte(strings.ToUpper(hex.EncodeToString(cookie[:]))), 0o400); err != nil {
		t.Fatalf("write Erlang cookie: %v", err)
	}
	for name, content := range map[string]string{
		"rabbitmq-env.conf": "",    // not /etc/rabbitmq/rabbitmq-env.conf
		"enabled_plugins":   "[].", // not /etc/rabbitmq/enabled_plugins
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	ns := &Nodes{dir: dir, epmdPort: warrentest.FreePort(t), epmdDone: make(chan struct{})}
	// epmd runs in the foreground, a child of the test, so that it is
	// stopped by its pid and dies with the test.
	ns.epmd = exec.Command("epmd", "-port", strconv.Itoa(ns.epmdPort))
	ns.epmd.Env = append(cleanEnv(), "ERL_EPMD_ADDRESS=127.0.0.1")
	ns.epmd.Stdout, ns.epmd.Stderr = nil, nil
	if err := startOwned(ns.epmd, ns.epmdDone); err != nil {
		t.Fatalf("start epmd: %v", err)
	}
	t.Cleanup(func() {
		_ = ns.epmd.Process.Kill()
		<-ns.epmdDone
	})
	WaitFor(t, 10*time.Second, "epmd listening", func() bool {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ns.epmdPort)))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return ns
}

// EnablePlugins makes the nodes started from now on run the named plugins
// (rabbitmq_prometheus, say), in place of none.
func (ns *Nodes) EnablePlugins(t testing.TB, plugins ...string) {
	t.Helper()
	list := "[" + strings.Join(plugins, ",") + "]."
	if err := os.WriteFile(filepath.Join(ns.dir, "enabled_plugins"), []byte(list), 0o600); err != nil {
		t.Fatalf("write enabled_plugins: %v", err)
	}
}

// StartNode starts a RabbitMQ node of the test's own and returns it once
// it accepts AMQP connections. The node, and all it stored, is gone when
// the test ends. It skips the test when CanStartNode says no.
func StartNode(t testing.TB) *Node {
	t.Helper()
	return NewNodes(t).Start(t, "warren")
}

// Node is a RabbitMQ node started by a test: its own data, logs, ports and
// configuration files, on 127.0.0.1.
type Node struct {
	// Name is the Erlang node name, name@localhost.
	Name string
	// Port is the AMQP port, on 127.0.0.1.
	Port int

	dir string
	env []string

	mu   sync.Mutex
	cmd  *exec.Cmd     // the running server, nil when stopped
	done chan struct{} // closed when cmd has exited
}

// Start starts the node name (name@localhost) with the lines of conf as
// its rabbitmq.conf, and waits until it accepts AMQP connections. The node
// is stopped when the test ends, even if it fails.
func (ns *Nodes) Start(t testing.TB, name string, conf ...string) *Node {
	t.Helper()
	dir := filepath.Join(ns.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("node directory: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write rabbitmq.conf: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "advanced.config"), []byte("[].\n"), 0o600); err != nil {
		t.Fatalf("write advanced.config: %v", err)
	}
	n := &Node{Name: name + "@localhost", Port: warrentest.FreePort(t), dir: dir}
	n.env = append(cleanEnv(),
		"HOME="+ns.dir,
		"ERL_EPMD_PORT="+strconv.Itoa(ns.epmdPort),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_USE_LONGNAME=false",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(warrentest.FreePort(t)),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(ns.dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(ns.dir, "enabled_plugins"),
		// Erlang distribution on loopback only, as the machine's node.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
	t.Cleanup(func() { n.shutdown(t) })
	n.Start(t)
	return n
}

// URL returns the AMQP URL of the node, as the guest user.
func (n *Node) URL() string {
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.Port)
}

// Addr returns the node's AMQP address, host:port.
func (n *Node) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port))
}

// Ctl runs rabbitmqctl against the node and returns its output; it fails
// the test if rabbitmqctl fails.
func (n *Node) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.ctl(time.Minute, args...)
	if err != nil {
		t.Fatalf("rabbitmqctl -n %s %s: %v", n.Name, strings.Join(args, " "), err)
	}
	return out
}

func (n *Node) ctl(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, "rabbitmqctl"), append([]string{"-n", n.Name}, args...)...)
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts the node's server process again after Stop (StartNode
// starts it the first time), and waits until it accepts connections. Its
// data survives: durable queues and persistent messages come back.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		t.Fatalf("start node %s: already running", n.Name)
	}
	pidFile := filepath.Join(n.dir, "pid")
	os.Remove(pidFile)
	out, err := os.OpenFile(filepath.Join(n.dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		n.mu.Unlock()
		t.Fatalf("start node %s: %v", n.Name, err)
	}
	defer out.Close()
	cmd := exec.Command(filepath.Join(rabbitBin, "rabbitmq-server"))
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = out, out
	done := make(chan struct{})
	if err := startOwned(cmd, done); err != nil {
		n.mu.Unlock()
		t.Fatalf("start node %s: %v", n.Name, err)
	}
	n.cmd, n.done = cmd, done
	n.mu.Unlock()

	// rabbitmqctl wait returns once the node booted, or fails soon after
	// the server process exits (a port taken, say).
	if _, err := n.ctl(nodeBootTimeout, "wait", pidFile, "--timeout", strconv.Itoa(int(nodeBootTimeout/time.Second))); err != nil {
		t.Fatalf("start node %s: %v\n%s", n.Name, err, n.tail())
	}
	n.waitListening(t)
}

// waitListening waits until the node accepts TCP connections on its AMQP
// port: the listener may open a moment after the node says it booted.
func (n *Node) waitListening(t testing.TB) {
	t.Helper()
	WaitFor(t, 30*time.Second, "node "+n.Name+" listening on "+n.Addr(), func() bool {
		c, err := net.DialTimeout("tcp", n.Addr(), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// Stop stops the whole node gracefully (rabbitmqctl stop: the Erlang VM
// exits) and waits for its process to end.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	if err := n.stop(); err != nil {
		t.Fatalf("stop node %s: %v\n%s", n.Name, err, n.tail())
	}
}

func (n *Node) stop() error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_, err := n.ctl(time.Minute, "stop")
	select {
	case <-done:
	case <-time.After(time.Minute):
		err = errors.Join(err, errors.New("server process still running a minute after rabbitmqctl stop"))
		// The server runs in its own session: its process group holds the
		// Erlang VM and whatever it started.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	n.mu.Lock()
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	return err
}

// shutdown stops the node at the end of the test, however it ended.
func (n *Node) shutdown(t testing.TB) {
	if t.Failed() {
		t.Logf("node %s said at the end:\n%s", n.Name, n.tail())
	}
	if err := n.stop(); err != nil {
		t.Logf("stop node %s: %v", n.Name, err)
	}
}

// StopApp stops the RabbitMQ application on the node (rabbitmqctl
// stop_app): the listeners close and every connection with them, while
// the Erlang VM runs on.
func (n *Node) StopApp(t testing.TB) {
	t.Helper()
	n.Ctl(t, "stop_app")
}

// StartApp starts the RabbitMQ application again and waits until the node
// accepts connections.
func (n *Node) StartApp(t testing.TB) {
	t.Helper()
	n.Ctl(t, "start_app")
	n.waitListening(t)
}

// CloseAllConnections makes the node close every client connection (320
// CONNECTION_FORCED), as rabbitmqctl close_all_connections does.
func (n *Node) CloseAllConnections(t testing.TB) {
	t.Helper()
	n.Ctl(t, "close_all_connections", "closed by warren test")
}

// tail returns the end of the server's output, to say why it failed.
func (n *Node) tail() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "server.out"))
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// startOwned starts cmd in a session of its own, so that the signals of
// the test's terminal do not reach it, and closes done once it exited. The
// goroutine that waits for it holds its OS thread until then: the process
// gets SIGTERM if that thread ends, that is, if the test process dies
// without its cleanups.
func startOwned(cmd *exec.Cmd, done chan struct{}) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(done)
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(done)
	}()
	return <-started
}

// cleanEnv is the test's environment without the variables that would
// point RabbitMQ or Erlang elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
