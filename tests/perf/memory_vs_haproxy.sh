#!/usr/bin/env bash
# Memory per connection: Debian's HAProxy 2.6 vs shardgate, in front of the same backend.
#
# NOT run by CI. A manual benchmark for a Linux box with HAProxy installed.
#
# For each proxy and each connection state, a fresh proxy is started, its resident memory (RSS,
# summed over its processes) read, COUNT connections opened through it and left in that state
# (examples/conn_hold.rs), RSS read again once all are open and settled; the growth divided by
# COUNT is the cost of one connection. States (each connection its own room):
#   ws         a WebSocket tunnel, idle after one message each way (plain)
#   ws-tls     the same over TLS to the proxy (TLS_COUNT connections)
#   keepalive  a client keep-alive connection, idle after one request
#   held       a request the shard holds (a BOSH long-poll), pending
#   h2         an HTTP/2 connection over TLS (ALPN h2), idle after one request (TLS_COUNT
#              connections): what a browser keeps to the page's host while a meeting runs
# HAProxy runs as deployed for Jitsi (room stickiness on the `room` parameter, `timeout tunnel
# 1h`, `timeout client/server 50s`); shardgate with a `shard` route. Both on one thread.
#
# Usage: tests/perf/memory_vs_haproxy.sh [--build]
#   --build   run `cargo build --release --example conn_hold` and the binary first (also done when
#             missing)
# Environment (defaults in brackets):
#   COUNT [4000]  TLS_COUNT [2000]  STATES ["ws ws-tls keepalive held"]  SETTLE_SECS [3]
#   SHARDGATE [<repo>/target/release/shardgate]  CONN_HOLD [<repo>/target/release/examples/conn_hold]
#   HAPROXY [/usr/sbin/haproxy]  KEEP_TMP [0]
#
# Output: a table of KiB per connection per state and proxy, the reproducing command, and last
#   ratio: <worst shardgate/haproxy over the states>
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

BUILD=0
for arg in "$@"; do
    case "$arg" in
        --build) BUILD=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SHARDGATE=${SHARDGATE:-$TARGET/shardgate}
CONN_HOLD=${CONN_HOLD:-$TARGET/examples/conn_hold}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
COUNT=${COUNT:-4000}
TLS_COUNT=${TLS_COUNT:-2000}
STATES=${STATES:-"ws ws-tls keepalive held"}
SETTLE_SECS=${SETTLE_SECS:-3}
KEEP_TMP=${KEEP_TMP:-0}

HOST=127.0.0.1
BACKEND_PORT=18201
PROXY_PORT=18202
PROXY_TLS_PORT=18203
ADMIN_PORT=18204

die() { echo "error: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

[[ $COUNT =~ ^[0-9]+$ && $COUNT -gt 0 ]] || die "COUNT must be a positive integer"
[[ $TLS_COUNT =~ ^[0-9]+$ && $TLS_COUNT -gt 0 ]] || die "TLS_COUNT must be a positive integer"
[ -x "$HAPROXY" ] || die "$HAPROXY not found (apt-get install haproxy)"
# Each connection holds a socket in the client, two in the proxy and one in the backend.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((COUNT * 2 + 100))
[ "$COUNT" -le 4000 ] || die "COUNT is at most 4,000 (HAProxy's maxconn here is 9,000 on a 20,000 open-file limit)"
[ "$(ulimit -n)" -ge "$need" ] || die "the open-file limit ($(ulimit -n)) is below $need: lower COUNT"

if [ "$BUILD" = 1 ] || [ ! -x "$CONN_HOLD" ] || { [ ! -x "$SHARDGATE" ] && [ "$SHARDGATE" = "$TARGET/shardgate" ]; }; then
    log "building: cargo build --release --bin shardgate --example conn_hold"
    (cd "$ROOT" && cargo build --release --bin shardgate --example conn_hold) || die "build failed"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/shardgate-mem.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$KEEP_TMP" = 1 ]; then echo "# kept temp dir: $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
wait_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + 20))
    until port_open "$port"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before port $port opened: $(tail -n 5 "$TMP/proxy.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "port $port did not open in 20 s"
        sleep 0.1
    done
}
# RSS in KiB of process group PGID (a proxy and its children).
rss_kib() { ps -o rss= -g "$1" | awk '{ s += $1 } END { print s + 0 }'; }

for port in $BACKEND_PORT $PROXY_PORT $PROXY_TLS_PORT $ADMIN_PORT; do
    port_open "$port" && die "$HOST:$port is in use"
done

# TLS: the test key pair (CN=localhost), as HAProxy wants it (certificate and key in one file).
cat "$ROOT/config/testdata/tls.crt" "$ROOT/config/testdata/tls.key" >"$TMP/haproxy.pem"

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 3s
    timeout client 50s
    timeout server 50s
    timeout tunnel 1h
    timeout http-request 10s
frontend edge
    bind $HOST:$PROXY_PORT
    bind $HOST:$PROXY_TLS_PORT ssl crt $TMP/haproxy.pem alpn h2,http/1.1
    default_backend shards
backend shards
    balance roundrobin
    stick-table type string len 128 size 200k expire 1d
    stick on url_param(room)
    server shard-0 $HOST:$BACKEND_PORT
EOF

cat >"$TMP/shardgate.toml" <<EOF
[[listener]]
addr = "$HOST:$PROXY_PORT"

[[listener]]
addr = "$HOST:$PROXY_TLS_PORT"
tls = { cert = "$ROOT/config/testdata/tls.crt", key = "$ROOT/config/testdata/tls.key" }

[admin]
addr = "$HOST:$ADMIN_PORT"

[[pool]]
name = "shards"
shards.list = [{ name = "shard-0", addrs = ["$HOST:$BACKEND_PORT"] }]

[[route]]
path_prefix = "/"
shard = { pool = "shards" }
EOF

setsid "$CONN_HOLD" backend "$HOST:$BACKEND_PORT" >"$TMP/backend.log" 2>&1 </dev/null &
PIDS+=($!)
wait_port "$BACKEND_PORT" "$!"

# measure PROXY STATE: sets KIB[PROXY] to the KiB per connection.
measure() {
    local proxy=$1 state=$2 count=$COUNT port=$PROXY_PORT tls="" kind=$2 pid before after ready
    if [ "$state" = ws-tls ]; then count=$TLS_COUNT; port=$PROXY_TLS_PORT; tls=tls; kind=ws; fi
    if [ "$state" = h2 ]; then count=$TLS_COUNT; port=$PROXY_TLS_PORT; tls=tls; fi
    case $proxy in
        haproxy) setsid "$HAPROXY" -db -f "$TMP/haproxy.cfg" >"$TMP/proxy.log" 2>&1 </dev/null & ;;
        shardgate) SHARDGATE_THREADS=1 setsid "$SHARDGATE" run --config "$TMP/shardgate.toml" >"$TMP/proxy.log" 2>&1 </dev/null & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    wait_port "$PROXY_PORT" "$pid"
    wait_port "$PROXY_TLS_PORT" "$pid"
    sleep 1
    before=$(rss_kib "$pid")
    # The clients hold their connections until their standard input closes.
    mkfifo "$TMP/hold"
    setsid "$CONN_HOLD" clients "$HOST:$port" "$kind" "$count" $tls <"$TMP/hold" >"$TMP/clients.out" 2>"$TMP/clients.err" &
    local clients=$!
    PIDS+=("$clients")
    exec 7>"$TMP/hold"
    local deadline=$((SECONDS + 120))
    until grep -q '^ready' "$TMP/clients.out" 2>/dev/null; do
        kill -0 "$clients" 2>/dev/null || die "the clients exited: $(tail -3 "$TMP/clients.err")"
        [ "$SECONDS" -lt "$deadline" ] || die "$proxy $state: connections not open after 120 s"
        sleep 0.2
    done
    ready=$(cat "$TMP/clients.out")
    [ "$ready" = "ready $count" ] || die "$proxy $state: $ready ($(head -3 "$TMP/clients.err"))"
    sleep "$SETTLE_SECS"
    after=$(rss_kib "$pid")
    exec 7>&-
    wait "$clients" 2>/dev/null || true
    rm -f "$TMP/hold"
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do port_open "$PROXY_PORT" || break; sleep 0.1; done
    log "$proxy $state: RSS $before KiB before, $after KiB with $count connections"
    KIB[$proxy]=$(awk -v a="$after" -v b="$before" -v n="$count" 'BEGIN { printf "%.2f", (a - b) / n }')
}

declare -A KIB
printf '%-10s %12s %12s %8s\n' state haproxy_KiB shardgate_KiB ratio
worst=0
for state in $STATES; do
    for proxy in haproxy shardgate; do
        measure "$proxy" "$state"
    done
    r=$(awk -v s="${KIB[shardgate]}" -v h="${KIB[haproxy]}" 'BEGIN { printf "%.2f", (h > 0 ? s / h : 0) }')
    printf '%-10s %12s %12s %8s\n' "$state" "${KIB[haproxy]}" "${KIB[shardgate]}" "$r"
    worst=$(awk -v w="$worst" -v r="$r" 'BEGIN { print (r > w ? r : w) }')
done
echo "command: COUNT=$COUNT TLS_COUNT=$TLS_COUNT STATES=\"$STATES\" SETTLE_SECS=$SETTLE_SECS tests/perf/memory_vs_haproxy.sh"
echo "ratio: $worst"
