#!/usr/bin/env bash
# HTTP keep-alive throughput: Debian's HAProxy 2.6 vs shardgate, same backend, same wrk load.
#
# NOT run by CI. A manual benchmark for a 2-core (or larger) Linux box:
#   CPU 0 (PROXY_CPU): the proxy under test (haproxy with nbthread 1, shardgate with SHARDGATE_THREADS=1)
#   CPU 1 (LOAD_CPU):  the nginx backend (three "shards" on one nginx) and wrk
#
# Both proxies route rooms stickily to three shards (HAProxy: Jitsi-style `stick on url_param(room)`,
# shardgate: a `shard` route). wrk requests /http-bind?room=room-<n>, n cycling over ROOMS rooms, on
# keep-alive connections. The runs alternate haproxy, shardgate, haproxy, ... each preceded by a short
# warm-up, and the medians are compared. Any non-2xx/3xx response (or, by default, wrk socket error)
# fails the run, so a proxy that answers errors quickly cannot win.
#
# MODE picks the variant: `plain` (HTTP/1.1), `tls` (HTTP/1.1 over TLS to the proxies, a fresh
# self-signed P-256 certificate, keep-alive connections so handshakes are a start-up cost only),
# `headers` (each request carries 100 extra headers, as browsers with cookies and tracing do).
#
# Usage: tests/perf/http_vs_haproxy.sh [--build]
#   --build   run `cargo build --release` first (also done when the default binary is missing)
# Environment (defaults in brackets):
#   MODE [plain]  CONNECTIONS [50]  DURATION [10s]  ROUNDS [3]  WRK_THREADS [1]  WARMUP [2s]  ROOMS [1000]
#   SHARDGATE [${CARGO_TARGET_DIR:-<repo>/target}/release/shardgate]
#   HAPROXY [/usr/sbin/haproxy]  NGINX [/usr/sbin/nginx]  WRK [/usr/bin/wrk]
#   PROXY_CPU [0]  LOAD_CPU [1]  KEEP_TMP [0] (1 keeps the temp dir with configs, logs and wrk output)
#   PORT_WAIT_SECS [20]  BUILD_TIMEOUT_SECS [1800]
#   ALLOW_SOCKET_ERRORS [0] (1: wrk socket errors are printed, not fatal; non-2xx/3xx always fail)
#   PACE_MS [0] (each connection waits this long between a response and its next request: an equal,
#     lighter load for both proxies, to compare latency when neither core is the limit)
#
# Output: one line per measured run, the median per proxy, the reproducing command line, and last
#   req/s ratio: <shardgate median req/s / haproxy median req/s>
#   ratio: <shardgate requests/s per core of its own / haproxy's> (medians of CPU per request; the
#          same as the req/s ratio when both proxies fill their core)
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
DEFAULT_SHARDGATE="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"
SHARDGATE=${SHARDGATE:-$DEFAULT_SHARDGATE}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-/usr/bin/wrk}
MODE=${MODE:-plain}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-2s}
ROOMS=${ROOMS:-1000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
ALLOW_SOCKET_ERRORS=${ALLOW_SOCKET_ERRORS:-0}
PORT_WAIT_SECS=${PORT_WAIT_SECS:-20}
PACE_MS=${PACE_MS:-0}
BUILD_TIMEOUT_SECS=${BUILD_TIMEOUT_SECS:-1800}

HOST=127.0.0.1
HAPROXY_PORT=18080
SHARDGATE_PORT=18081
SHARDGATE_ADMIN_PORT=18091
SHARD_PORTS=(18101 18102 18103)

die() { echo "error: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

# --- argument checks ---------------------------------------------------------------------------
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
# wrk durations: a number with an optional s/m/h suffix. Prints seconds.
duration_secs() {
    local d=$1
    [[ $d =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$d' (want e.g. 10s, 1m)"
    local n=${BASH_REMATCH[1]}
    case ${BASH_REMATCH[2]} in
        ''|s) echo "$n" ;;
        m) echo $((n * 60)) ;;
        h) echo $((n * 3600)) ;;
    esac
}
for v in CONNECTIONS ROUNDS WRK_THREADS ROOMS PORT_WAIT_SECS BUILD_TIMEOUT_SECS; do
    { is_uint "${!v}" && [ "${!v}" -gt 0 ]; } || die "$v must be a positive integer, got '${!v}'"
done
is_uint "$PACE_MS" || die "PACE_MS must be a whole number of milliseconds, got '$PACE_MS'"
[ "$CONNECTIONS" -ge "$WRK_THREADS" ] || die "CONNECTIONS ($CONNECTIONS) must be >= WRK_THREADS ($WRK_THREADS)"
case "$MODE" in
    plain|tls|headers) ;;
    *) die "MODE must be plain, tls or headers, got '$MODE'" ;;
esac
SCHEME=http
[ "$MODE" = tls ] && SCHEME=https
DURATION_SECS=$(duration_secs "$DURATION")
WARMUP_SECS=$(duration_secs "$WARMUP")
[ "$DURATION_SECS" -gt 0 ] || die "DURATION must be > 0"

for tool in "$HAPROXY" "$NGINX" "$WRK"; do
    [ -x "$tool" ] || die "$tool not found or not executable"
done
for tool in taskset timeout curl setsid awk sort; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not in PATH"
done

# --- CPUs ----------------------------------------------------------------------------------------
NPROC=$(nproc)
echo "nproc: $NPROC"
if [ "$NPROC" -lt 2 ]; then
    echo "WARNING: fewer than 2 CPUs available: proxy, backend and wrk share one CPU; figures are not meaningful" >&2
    PROXY_CPU=0
    LOAD_CPU=0
fi
taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to PROXY_CPU=$PROXY_CPU"
taskset -c "$LOAD_CPU" true 2>/dev/null || die "cannot pin to LOAD_CPU=$LOAD_CPU"

# Other work on the benchmark CPUs (a compile, say) makes the figures noise: measure it for 1s and warn.
cpu_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
if [ -r /proc/stat ]; then
    read -r p_busy0 p_all0 < <(cpu_ticks "$PROXY_CPU")
    read -r l_busy0 l_all0 < <(cpu_ticks "$LOAD_CPU")
    sleep 1
    read -r p_busy1 p_all1 < <(cpu_ticks "$PROXY_CPU")
    read -r l_busy1 l_all1 < <(cpu_ticks "$LOAD_CPU")
    p_pct=$(( (p_busy1 - p_busy0) * 100 / (p_all1 - p_all0 > 0 ? p_all1 - p_all0 : 1) ))
    l_pct=$(( (l_busy1 - l_busy0) * 100 / (l_all1 - l_all0 > 0 ? l_all1 - l_all0 : 1) ))
    echo "CPU use before start: cpu$PROXY_CPU ${p_pct}% busy, cpu$LOAD_CPU ${l_pct}% busy"
    if [ "$p_pct" -gt 10 ] || [ "$l_pct" -gt 10 ]; then
        echo "WARNING: the benchmark CPUs are already busy (other processes); figures will be noisy" >&2
    fi
fi

# --- shardgate binary ----------------------------------------------------------------------------
if [ "$BUILD" = 1 ] || { [ ! -x "$SHARDGATE" ] && [ "$SHARDGATE" = "$DEFAULT_SHARDGATE" ]; }; then
    log "building shardgate: cargo build --release (timeout ${BUILD_TIMEOUT_SECS}s)"
    (cd "$ROOT" && timeout "$BUILD_TIMEOUT_SECS" cargo build --release) \
        || die "cargo build --release failed (or timed out after ${BUILD_TIMEOUT_SECS}s)"
fi
[ -x "$SHARDGATE" ] || die "shardgate binary not found at $SHARDGATE (set SHARDGATE or pass --build)"

# --- temp dir and cleanup -----------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shardgate-perf.XXXXXX")
PIDS=()
WRK_PID=""

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    if [ -n "$WRK_PID" ]; then
        kill -TERM -- "-$WRK_PID" 2>/dev/null || kill -TERM "$WRK_PID" 2>/dev/null || true
        wait "$WRK_PID" 2>/dev/null || true
    fi
    # Each service runs in its own session/process group (setsid), so nginx workers go with the master.
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP_TMP" = 1 ]; then
        echo "# kept temp dir: $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU CMD...: runs CMD pinned to CPU in a new process group, output to $TMP/NAME.log.
# Sets STARTED_PID.
start() {
    local name=$1 cpu=$2
    shift 2
    # Not a process-group leader (no job control), so setsid execs in place and $! is the service.
    setsid taskset -c "$cpu" "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_port NAME PORT PID: wait until PORT accepts, failing if PID dies or PORT_WAIT_SECS pass.
wait_port() {
    local name=$1 port=$2 pid=$3 deadline=$((SECONDS + PORT_WAIT_SECS))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $name (pid $pid) exited before $HOST:$port accepted connections; its log:" >&2
            tail -n 30 "$TMP/$name.log" >&2 || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: $name: $HOST:$port did not accept connections within ${PORT_WAIT_SECS}s; its log:" >&2
            tail -n 30 "$TMP/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
}

for port in "$HAPROXY_PORT" "$SHARDGATE_PORT" "$SHARDGATE_ADMIN_PORT" "${SHARD_PORTS[@]}"; do
    if port_open "$port"; then
        die "$HOST:$port is already in use; stop whatever listens there first"
    fi
done

# --- backend: one nginx, three shards -------------------------------------------------------------
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/temp"
NGINX_TEMP_PATHS=""
for mod in client_body proxy fastcgi uwsgi scgi; do
    if [ "$mod" = client_body ] || ! "$NGINX" -V 2>&1 | grep -q -- "--without-http_${mod}_module"; then
        NGINX_TEMP_PATHS+="    ${mod}_temp_path $TMP/nginx/temp/$mod;"$'\n'
    fi
done
NGINX_SERVERS=""
for i in "${!SHARD_PORTS[@]}"; do
    NGINX_SERVERS+="    server {
        listen $HOST:${SHARD_PORTS[$i]} reuseport backlog=4096;
        location / {
            default_type text/plain;
            return 200 \"shard-$i\\n\";
        }
    }
"
done
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
$NGINX_TEMP_PATHS
$NGINX_SERVERS}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" \
    || die "nginx rejected $TMP/nginx/nginx.conf"
start nginx "$LOAD_CPU" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log"
NGINX_PID=$STARTED_PID
for i in "${!SHARD_PORTS[@]}"; do
    wait_port nginx "${SHARD_PORTS[$i]}" "$NGINX_PID"
    body=$(curl -sS --max-time 5 "http://$HOST:${SHARD_PORTS[$i]}/") || die "backend shard-$i not answering"
    [ "$body" = "shard-$i" ] || die "backend shard-$i answered '$body'"
done
log "nginx backend up on ${SHARD_PORTS[*]} (pid $NGINX_PID, cpu $LOAD_CPU)"

# --- proxy configs --------------------------------------------------------------------------------
HAPROXY_BIND="bind $HOST:$HAPROXY_PORT"
SHARDGATE_TLS=""
if [ "$MODE" = tls ]; then
    command -v openssl >/dev/null || die "MODE=tls needs openssl"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null \
        || die "openssl could not make a certificate"
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
    HAPROXY_BIND="bind $HOST:$HAPROXY_PORT ssl crt $TMP/haproxy.pem alpn http/1.1"
    SHARDGATE_TLS="tls = { cert = \"$TMP/cert.pem\", key = \"$TMP/key.pem\" }"
fi
# maxconn bounds HAProxy's FD needs (about 2 per connection); keep it under a modest `ulimit -n`.
HAPROXY_MAXCONN=$((CONNECTIONS + 100 > 4096 ? CONNECTIONS + 100 : 4096))
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    # Room for MODE=headers (the default, 101, counts the request line's too).
    tune.http.maxhdr 128

defaults
    mode http
    timeout connect 3s
    timeout client 50s
    timeout server 50s
    option http-keep-alive
    http-reuse always

frontend http-in
    $HAPROXY_BIND
    default_backend shards

backend shards
    balance roundrobin
    # Jitsi's is "size 2k"; bigger so the table never fills and evicts during the benchmark.
    stick-table type string len 128 size 200k expire 1d
    stick on url_param(room)
    server shard-0 $HOST:${SHARD_PORTS[0]}
    server shard-1 $HOST:${SHARD_PORTS[1]}
    server shard-2 $HOST:${SHARD_PORTS[2]}
EOF
"$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejected $TMP/haproxy.cfg"

cat >"$TMP/shardgate.toml" <<EOF
[[listener]]
addr = "$HOST:$SHARDGATE_PORT"
$SHARDGATE_TLS

[admin]
addr = "$HOST:$SHARDGATE_ADMIN_PORT"

[[pool]]
name = "shards"
shards.list = [
  { name = "shard-0", addrs = ["$HOST:${SHARD_PORTS[0]}"] },
  { name = "shard-1", addrs = ["$HOST:${SHARD_PORTS[1]}"] },
  { name = "shard-2", addrs = ["$HOST:${SHARD_PORTS[2]}"] },
]

[[route]]
path_prefix = "/"
shard = { pool = "shards" }
EOF

# --- start the proxies ----------------------------------------------------------------------------
# Both stay up for the whole benchmark; only the one under load uses CPU while the other idles.
start haproxy "$PROXY_CPU" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
HAPROXY_PID=$STARTED_PID
start shardgate "$PROXY_CPU" env SHARDGATE_THREADS=1 RUST_LOG="${RUST_LOG:-warn}" \
    "$SHARDGATE" run --config "$TMP/shardgate.toml"
SHARDGATE_PID=$STARTED_PID
wait_port haproxy "$HAPROXY_PORT" "$HAPROXY_PID"
wait_port shardgate "$SHARDGATE_PORT" "$SHARDGATE_PID"
log "haproxy on $HAPROXY_PORT (pid $HAPROXY_PID), shardgate on $SHARDGATE_PORT (pid $SHARDGATE_PID), cpu $PROXY_CPU"

# Sanity: each proxy answers 200 with a shard's body and keeps a room on one shard.
check_proxy() {
    local name=$1 port=$2 room first body code _
    for room in sanity-a sanity-b sanity-c; do
        first=""
        for _ in 1 2 3; do
            code=$(curl -ksS --max-time 5 -o "$TMP/check.body" -w '%{http_code}' \
                "$SCHEME://$HOST:$port/http-bind?room=$room") || die "$name: request for room $room failed"
            body=$(cat "$TMP/check.body")
            [ "$code" = 200 ] || die "$name: /http-bind?room=$room answered HTTP $code: $body"
            [[ $body =~ ^shard-[0-2]$ ]] || die "$name: /http-bind?room=$room answered unexpected body '$body'"
            [ -z "$first" ] && first=$body
            [ "$body" = "$first" ] || die "$name: room $room not sticky ($first, then $body)"
        done
    done
}
check_proxy haproxy "$HAPROXY_PORT"
check_proxy shardgate "$SHARDGATE_PORT"

# --- load -----------------------------------------------------------------------------------------
cat >"$TMP/rooms.lua" <<EOF
-- Jitsi-style BOSH URLs carrying a room, cycling over $ROOMS rooms.
local rooms = $ROOMS
local n = 0
local thread_counter = 0

function setup(thread)
    thread:set("offset", thread_counter)
    thread_counter = thread_counter + 1
end

local headers = {}

function init(args)
    n = (tonumber(offset) or 0) * 997
    for i = 1, $( [ "$MODE" = headers ] && echo 100 || echo 0 ) do
        headers["X-Header-" .. i] = "value-" .. i .. "-abcdefghijklmnopqrstuvwxyz"
    end
end

function request()
    n = n + 1
    return wrk.format("GET", "/http-bind?room=room-" .. (n % rooms), headers)
end
EOF
if [ "$PACE_MS" -gt 0 ]; then
    # Each connection waits PACE_MS after a response before its next request: the same offered
    # load for both proxies, below what either core serves, for latency at equal load.
    printf 'function delay()\n    return %d\nend\n' "$PACE_MS" >>"$TMP/rooms.lua"
fi

WRK_ARGS=(-t"$WRK_THREADS" -c"$CONNECTIONS" --timeout 5s -s "$TMP/rooms.lua")

# run_wrk OUTFILE PORT DURATION DURATION_SECS
run_wrk() {
    local out=$1 port=$2 dur=$3 secs=$4
    # In the background and waited for, so INT/TERM reach the traps at once; `timeout` leads its
    # own process group, which cleanup() kills if we are interrupted.
    timeout --kill-after=5 $((secs + 30)) taskset -c "$LOAD_CPU" \
        "$WRK" "${WRK_ARGS[@]}" -d"$dur" --latency "$SCHEME://$HOST:$port/" >"$out" 2>&1 </dev/null &
    WRK_PID=$!
    if ! wait "$WRK_PID"; then
        WRK_PID=""
        cat "$out" >&2 || true
        die "wrk against $HOST:$port failed or timed out"
    fi
    WRK_PID=""
}

# to_us VALUE: wrk time (e.g. 812.00us, 1.23ms, 2.01s, 1.50m) -> integer microseconds
to_us() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) exit 1
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000
        else if (u == "m") f = 60000000; else if (u == "h") f = 3600000000; else exit 1
        printf "%.0f\n", n * f
    }'
}

# median of the numbers given as arguments
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
        END { if (NR % 2) printf "%.1f\n", a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

CLK_TCK=$(getconf CLK_TCK)
# utime + stime of a process and its threads, in clock ticks.
cpu_ticks_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

HAPROXY_RPS=()
HAPROXY_P99=()
HAPROXY_CPU=()
SHARDGATE_CPU=()
SHARDGATE_RPS=()
SHARDGATE_P99=()

# measure NAME PORT ROUND
measure() {
    local name=$1 port=$2 round=$3 out rps p99_raw p99 non2xx sockerr pid
    pid=$HAPROXY_PID
    [ "$name" = shardgate ] && pid=$SHARDGATE_PID
    if [ "$WARMUP_SECS" -gt 0 ]; then
        run_wrk "$TMP/wrk-$name-$round-warmup.txt" "$port" "$WARMUP" "$WARMUP_SECS"
    fi
    out="$TMP/wrk-$name-$round.txt"
    local cpu0 cpu1 reqs lb0 la0 lb1 la1
    cpu0=$(cpu_ticks_of "$pid")
    read -r lb0 la0 < <(cpu_ticks "$LOAD_CPU")
    run_wrk "$out" "$port" "$DURATION" "$DURATION_SECS"
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$TMP/$name.log" >&2; die "$name died during round $round"; }
    cpu1=$(cpu_ticks_of "$pid")
    read -r lb1 la1 < <(cpu_ticks "$LOAD_CPU")

    rps=$(awk '$1 == "Requests/sec:" { print $2 }' "$out")
    p99_raw=$(awk '$1 == "99%" { print $2 }' "$out")
    if [ -z "$rps" ] || [ -z "$p99_raw" ]; then
        cat "$out" >&2
        die "could not parse wrk output for $name round $round"
    fi
    p99=$(to_us "$p99_raw") || { cat "$out" >&2; die "could not parse p99 '$p99_raw'"; }
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    # CPU time of the proxy per request (user + system), in microseconds: what the proxy costs,
    # whether or not the load generator's core was the limit.
    local cpu_us
    cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    # How busy each core was: a proxy whose core was not always busy was held back by the load
    # generator's (wrk and nginx), and its requests/s understate what its core can serve.
    local proxy_pct load_pct
    proxy_pct=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v d="$DURATION_SECS" 'BEGIN { printf "%.0f", t / hz / d * 100 }')
    load_pct=$(( (lb1 - lb0) * 100 / (la1 - la0 > 0 ? la1 - la0 : 1) ))
    echo "$name round $round: $rps req/s p99 $p99 us, $cpu_us us CPU per request (proxy ${proxy_pct}% of its core, load core ${load_pct}% busy)"

    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(grep 'Socket errors:' "$out" || true)
    if [ -n "$non2xx" ]; then
        echo "$name round $round: non-2xx responses: $non2xx"
    fi
    if [ -n "$sockerr" ]; then
        echo "$name round $round:${sockerr#*:}"
    fi
    if [ -n "$non2xx" ] && [ "$non2xx" -gt 0 ]; then
        cat "$out" >&2
        tail -n 20 "$TMP/$name.log" >&2 || true
        die "$name answered $non2xx non-2xx/3xx responses in round $round: its figures are not comparable"
    fi
    if [ -n "$sockerr" ] && [ "$ALLOW_SOCKET_ERRORS" != 1 ]; then
        cat "$out" >&2
        tail -n 20 "$TMP/$name.log" >&2 || true
        die "$name had socket errors in round $round: its figures are not comparable (ALLOW_SOCKET_ERRORS=1 only warns)"
    fi

    if [ "$name" = haproxy ]; then
        HAPROXY_RPS+=("$rps")
        HAPROXY_P99+=("$p99")
        HAPROXY_CPU+=("$cpu_us")
    else
        SHARDGATE_RPS+=("$rps")
        SHARDGATE_P99+=("$p99")
        SHARDGATE_CPU+=("$cpu_us")
    fi
}

log "wrk ${WRK_ARGS[*]} -d$DURATION --latency, warm-up $WARMUP, $ROUNDS round(s), $ROOMS rooms"
for round in $(seq 1 "$ROUNDS"); do
    measure haproxy "$HAPROXY_PORT" "$round"
    measure shardgate "$SHARDGATE_PORT" "$round"
done

H_RPS=$(median "${HAPROXY_RPS[@]}")
H_P99=$(median "${HAPROXY_P99[@]}")
S_RPS=$(median "${SHARDGATE_RPS[@]}")
S_P99=$(median "${SHARDGATE_P99[@]}")
H_CPU=$(median "${HAPROXY_CPU[@]}")
S_CPU=$(median "${SHARDGATE_CPU[@]}")
printf 'haproxy: %s req/s, p99 %.0f us, %s us CPU per request\n' "$H_RPS" "$H_P99" "$H_CPU"
printf 'shardgate: %s req/s, p99 %.0f us, %s us CPU per request\n' "$S_RPS" "$S_P99" "$S_CPU"
echo "reproduce: MODE=$MODE PACE_MS=$PACE_MS CONNECTIONS=$CONNECTIONS DURATION=$DURATION ROUNDS=$ROUNDS WRK_THREADS=$WRK_THREADS WARMUP=$WARMUP ROOMS=$ROOMS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU SHARDGATE=$SHARDGATE tests/perf/http_vs_haproxy.sh"
echo "  (each run: taskset -c $LOAD_CPU wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --timeout 5s --latency -s rooms.lua $SCHEME://$HOST:<$HAPROXY_PORT|$SHARDGATE_PORT>/)"
# When the load generator's core is the limit both proxies serve about the same rate: the CPU
# each spent per request says which is cheaper.
awk -v s="$S_CPU" -v h="$H_CPU" 'BEGIN { printf "cpu ratio: %.2f (haproxy/shardgate CPU per request; 1.00 or more is no costlier)\n", (s > 0 ? h / s : 0) }'
# p99 no worse than HAProxy's is part of the target; say how they compare.
awk -v s="$S_P99" -v h="$H_P99" 'BEGIN { printf "p99 ratio: %.2f (shardgate/haproxy; 1.00 or less is no worse)\n", (h > 0 ? s / h : 0) }'
awk -v s="$S_RPS" -v h="$H_RPS" 'BEGIN { printf "req/s ratio: %.2f (shardgate/haproxy requests per second, whatever the cores did)\n", (h > 0 ? s / h : 0) }'
# The target: requests per second per core of the proxy (1 / CPU per request), which is the
# requests/s ratio when both proxies fill their core, and stays meaningful when the load
# generator's core is the limit.
awk -v s="$S_CPU" -v h="$H_CPU" 'BEGIN { printf "ratio: %.2f\n", (s > 0 ? h / s : 0) }'
