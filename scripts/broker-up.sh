#!/usr/bin/env bash
# broker-up.sh — make sure a RabbitMQ broker answers.
#
# Usage: scripts/broker-up.sh [AMQP_URL]
#
# The URL comes from $1, else $WARREN_TEST_AMQP_URL, else $WARREN_AMQP_URL,
# else amqp://guest:guest@localhost:5672/. With a comma-separated list the
# first URL is checked. The URL is never printed (it may hold a password);
# only host:port is.
#
# If host:port accepts TCP the broker is considered up (fast path, no Erlang
# VM involved). Otherwise, for a local host, the broker is started
# (`rabbitmq-server -detached`), installing rabbitmq-server with apt-get first
# when it is missing and we are root, and we wait until it answers.
#
# Environment:
#   BROKER_UP_TIMEOUT  seconds to wait for a started broker (default 90)
set -euo pipefail

# rabbitmq-server / rabbitmqctl live in /usr/sbin on Debian, which is not on
# every user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

readonly DEFAULT_URL='amqp://guest:guest@localhost:5672/'
readonly WAIT_SECS="${BROKER_UP_TIMEOUT:-90}"

log() { printf 'broker-up: %s\n' "$*"; }
err() { printf 'broker-up: %s\n' "$*" >&2; }

url="${1:-${WARREN_TEST_AMQP_URL:-${WARREN_AMQP_URL:-$DEFAULT_URL}}}"
url="${url%%,*}"                       # first of a comma-separated list
url="${url#"${url%%[![:space:]]*}"}"   # trim leading blanks
url="${url%"${url##*[![:space:]]}"}"   # trim trailing blanks

# --- parse scheme://[user[:pass]@]host[:port][/vhost][?query] -------------
case "$url" in
  amqp://*)  default_port=5672 ;;
  amqps://*) default_port=5671 ;;
  *)
    err "unsupported URL scheme '${url%%:*}' (want amqp:// or amqps://)"
    exit 1 ;;
esac
rest="${url#*://}"
rest="${rest%%/*}"          # drop /vhost
rest="${rest%%\?*}"         # drop ?query
rest="${rest%%#*}"          # drop #fragment
hostport="${rest##*@}"      # drop user:pass@ (last @: passwords may hold '@')

if [[ "$hostport" == \[* ]]; then          # [ipv6]:port
  host="${hostport#\[}"
  host="${host%%\]*}"
  port="${hostport#*\]}"
  port="${port#:}"
else
  host="${hostport%%:*}"
  port=""
  [[ "$hostport" == *:* ]] && port="${hostport#*:}"
fi
host="${host:-localhost}"
port="${port:-$default_port}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
  err "invalid port '$port' for host $host"
  exit 1
fi

if [[ "$host" == *:* ]]; then addr="[$host]:$port"; else addr="$host:$port"; fi

is_local=false
case "$host" in
  localhost|localhost.|127.*|::1|0:0:0:0:0:0:0:1) is_local=true ;;
esac

# --- helpers ---------------------------------------------------------------
# shellcheck disable=SC2016  # $1/$2 expand in the child bash
tcp_ok() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

have() { command -v "$1" >/dev/null 2>&1; }

# as_root CMD...: run as root (directly, or through password-less sudo).
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif have sudo && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}
can_root() { [[ $EUID -eq 0 ]] || { have sudo && sudo -n true 2>/dev/null; }; }

how_to_fix() {
  err "To get a broker:"
  err "  install RabbitMQ, e.g.:  sudo apt-get install rabbitmq-server"
  err "  start it:                sudo rabbitmq-server -detached"
  err "or point WARREN_AMQP_URL / WARREN_TEST_AMQP_URL at a reachable broker."
}

node_running() {   # is a local RabbitMQ node (Erlang VM) up, maybe still booting?
  have rabbitmqctl || return 1
  timeout 15 rabbitmqctl -q ping >/dev/null 2>&1
}

show_logs() {
  local f
  for f in "${start_log:-}" /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log; do
    [[ -n "$f" && -s "$f" ]] || continue
    err "--- last lines of $f ---"
    tail -n 20 "$f" >&2 || true
  done
}

# wait_up: poll TCP once a second, then confirm with `rabbitmqctl await_startup`.
wait_up() {
  local deadline=$((SECONDS + WAIT_SECS)) left
  log "waiting up to ${WAIT_SECS}s for $addr"
  until tcp_ok; do
    if (( SECONDS >= deadline )); then
      err "broker did not answer at $addr within ${WAIT_SECS}s"
      show_logs
      return 1
    fi
    sleep 1
  done
  if have rabbitmqctl; then
    left=$((deadline - SECONDS)); (( left < 10 )) && left=10
    if ! timeout "$left" rabbitmqctl -q await_startup >/dev/null 2>&1; then
      err "rabbitmqctl await_startup did not succeed within ${left}s"
      show_logs
      return 1
    fi
  fi
}

up() { log "broker answers at $addr"; exit 0; }

# --- fast path ---------------------------------------------------------------
tcp_ok && up

if ! $is_local; then
  err "no broker answers at $addr (remote host; not starting anything)"
  err "check that the broker runs and is reachable, or set WARREN_AMQP_URL / WARREN_TEST_AMQP_URL."
  exit 1
fi

log "no broker answers at $addr"

# --- local: install if missing ---------------------------------------------
if ! have rabbitmq-server; then
  if have apt-get && can_root; then
    log "rabbitmq-server is not installed; installing it with apt-get"
    as_root apt-get update -q </dev/null
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends rabbitmq-server </dev/null
    hash -r
  else
    err "rabbitmq-server is not installed and cannot be installed automatically" \
        "(needs root and apt-get)."
    how_to_fix
    exit 1
  fi
  # The package may have started the broker itself.
  if tcp_ok; then
    wait_up || exit 1
    up
  fi
fi

# --- local: start (or wait for a node that is already booting) --------------
if node_running; then
  # The Erlang node runs but the listener is closed: either still booting, or
  # the app was stopped (rabbitmqctl stop_app).
  log "RabbitMQ node is running but not listening; waiting for it to boot"
  if timeout 15 rabbitmqctl -q await_startup >/dev/null 2>&1; then
    # The app is running: give the listener a moment, then give up quickly
    # rather than waiting for a port it will never open.
    sleep 1
    tcp_ok && up
    err "RabbitMQ runs on this machine but does not listen on $addr;"
    err "check its listeners (rabbitmq.conf) or the host/port of the URL."
    exit 1
  fi
  log "starting the RabbitMQ app: rabbitmqctl start_app"
  as_root rabbitmqctl -q start_app >/dev/null 2>&1 || true
else
  if ! can_root; then
    err "rabbitmq-server is installed but does not answer here, and starting it needs root."
    how_to_fix
    exit 1
  fi
  start_log="$(mktemp "${TMPDIR:-/tmp}/broker-up.XXXXXX")"
  trap 'rm -f "$start_log"' EXIT
  log "starting RabbitMQ: rabbitmq-server -detached"
  if ! as_root rabbitmq-server -detached </dev/null >"$start_log" 2>&1; then
    err "rabbitmq-server -detached failed"
    show_logs
    how_to_fix
    exit 1
  fi
fi

if wait_up; then
  up
fi
how_to_fix
exit 1
