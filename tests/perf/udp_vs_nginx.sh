#!/usr/bin/env bash
# UDP relay throughput and latency: Debian's nginx 1.22 `stream` UDP proxy vs shardgate's media
# relay, in front of the same UDP echo target, driven by the same load generator
# (examples/udp_load.rs: sendmmsg/recvmmsg, one datagram per message, no GSO).
#
# NOT run by CI. A manual benchmark for a 2-core (or larger) Linux box:
#   CPU 0 (PROXY_CPU): the proxy under test (nginx with one worker, shardgate with one relay thread)
#   CPU 1 (LOAD_CPU):  the echo target and the load generator
# Needs nginx's stream module (Debian: apt-get install libnginx-mod-stream).
#
# For each rate in RATES, each path (direct to the echo, through nginx, through shardgate) is
# loaded for DURATION seconds with FLOWS client sockets; the round trip's loss and p50/p99 are
# printed with the proxy's CPU time. Per proxy: the highest rate with < 0.1 % loss, the latency it
# adds over the direct path (p50/p99 at the highest rate both proxies carry loss-free), and the
# CPU it spends per relayed datagram at that rate. The ratio is of the loss-free rates; when a
# proxy carried every rate the direct path did, the load generator's core was the limit, not
# that proxy, and the ratio is taken from the CPU per datagram instead (datagrams/s one core
# can relay). nginx's listening socket gets the receive buffer shardgate's public sockets ask
# for (1 MiB).
#
# Usage: tests/perf/udp_vs_nginx.sh
# Environment (defaults in brackets): RATES ["25000 50000 100000 150000 200000"] DURATION [3]
#   FLOWS [16] SIZE [200] PROXY_CPU [0] LOAD_CPU [1] KEEP_TMP [0]
# Output: one line per run, the summary per proxy, the reproducing command, and last
#   ratio: <shardgate/nginx packets/s>
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RATES=${RATES:-"25000 50000 100000 150000 200000"}
DURATION=${DURATION:-3}
FLOWS=${FLOWS:-16}
SIZE=${SIZE:-200}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
NGINX=${NGINX:-/usr/sbin/nginx}
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
ECHO_PORT=19000 NGINX_PORT=19100 RELAY_PORT=19200 HTTP_PORT=19280 ADMIN_PORT=19290

die() { echo "error: $*" >&2; exit 1; }
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx-light)"
[ -f "$STREAM_MODULE" ] || die "no nginx stream module at $STREAM_MODULE (apt-get install libnginx-mod-stream)"
[ "$(nproc)" -ge 2 ] || echo "WARNING: one CPU: proxy and load share it; figures are not meaningful" >&2

echo "# building (release)"
(cd "$ROOT" && cargo build --release --quiet --bin shardgate --example udp_load)
SHARDGATE="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"
LOAD="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/udp_load"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    # SIGINT for shardgate: it exits at once (SIGTERM keeps its ports for shutdown_delay).
    [ -n "${SG_PID:-}" ] && kill -INT "$SG_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    if [ "$KEEP_TMP" = 1 ]; then echo "# kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

taskset -c "$LOAD_CPU" "$LOAD" echo "127.0.0.1:$ECHO_PORT" & PIDS+=($!)

cat > "$TMP/nginx.conf" <<EOF
load_module $STREAM_MODULE;
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 65536; }
stream {
    server {
        # The receive buffer shardgate asks for on its public sockets (PUBLIC_RECV_BUFFER).
        listen 127.0.0.1:$NGINX_PORT udp rcvbuf=1m;
        proxy_pass 127.0.0.1:$ECHO_PORT;
        proxy_timeout 60s;
    }
}
EOF
taskset -c "$PROXY_CPU" "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)

cat > "$TMP/shardgate.toml" <<EOF
[[listener]]
addr = "127.0.0.1:$HTTP_PORT"

[admin]
addr = "127.0.0.1:$ADMIN_PORT"

[media]
threads = 1

[[media.zone]]
name = "bench"
bind = "127.0.0.1"
ports = "$RELAY_PORT-$RELAY_PORT"
targets = ["127.0.0.1:$ECHO_PORT"]
max_flows_per_source = 1000

[[route]]
path_prefix = "/"
respond = { status = 200, body = "ok" }
EOF
SHARDGATE_THREADS=1 RUST_LOG=warn taskset -c "$PROXY_CPU" "$SHARDGATE" run --config "$TMP/shardgate.toml" \
    > "$TMP/shardgate.log" 2>&1 &
SG_PID=$!
sleep 1.5
NGINX_WORKER=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
[ -n "$NGINX_WORKER" ] || die "nginx did not start: $(cat "$TMP/nginx-error.log")"
kill -0 "$SG_PID" 2>/dev/null || die "shardgate did not start: $(cat "$TMP/shardgate.log")"

# CPU seconds (user + system) a process has used.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

declare -A LOSS P50 P99 CPU RECEIVED
measure() { # name port pid
    local name=$1 port=$2 pid=$3 rate=$4 before after line
    before=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    line=$(taskset -c "$LOAD_CPU" "$LOAD" run "127.0.0.1:$port" "$rate" "$DURATION" "$FLOWS" "$SIZE")
    after=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    LOSS[$name,$rate]=$(sed -E 's/.*loss_pct=([0-9.]+).*/\1/' <<<"$line")
    P50[$name,$rate]=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
    P99[$name,$rate]=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
    RECEIVED[$name,$rate]=$(sed -E 's/.*received=([0-9]+).*/\1/' <<<"$line")
    CPU[$name,$rate]=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a - b }')
    printf '%-9s rate=%-7s %s proxy_cpu_s=%s\n' "$name" "$rate" "$line" "${CPU[$name,$rate]}"
}

for rate in $RATES; do
    measure direct "$ECHO_PORT" "" "$rate"
    measure nginx "$NGINX_PORT" "$NGINX_WORKER" "$rate"
    measure shardgate "$RELAY_PORT" "$SG_PID" "$rate"
done

ok() { awk -v l="$1" 'BEGIN { exit !(l < 0.1) }'; }
best() { local name=$1 b=0; for r in $RATES; do ok "${LOSS[$name,$r]}" && b=$r; done; echo "$b"; }
common=0
for r in $RATES; do
    if ok "${LOSS[nginx,$r]}" && ok "${LOSS[shardgate,$r]}"; then common=$r; fi
done
[ "$common" -gt 0 ] || die "no rate was carried loss-free by both proxies; lower RATES"
direct_best=$(best direct)
echo
echo "loss-free (< 0.1 %) up to: direct $direct_best/s, nginx $(best nginx)/s, shardgate $(best shardgate)/s"
for name in nginx shardgate; do
    # CPU per relayed datagram: each round trip is two datagrams through the proxy.
    per=$(awk -v c="${CPU[$name,$common]}" -v n="${RECEIVED[$name,$common]}" 'BEGIN { printf "%.2f", 1e6 * c / (2 * n) }')
    cap=$(awk -v p="$per" 'BEGIN { printf "%.0f", (p > 0) ? 1e6 / p : 0 }')
    echo "$name at $common/s: added p50 $((P50[$name,$common] - P50[direct,$common])) us, p99 $((P99[$name,$common] - P99[direct,$common])) us; CPU ${per} us per datagram (one core: ~${cap} datagrams/s)"
    eval "CAP_$name=$cap"
done
echo "reproduce: RATES=\"$RATES\" DURATION=$DURATION FLOWS=$FLOWS SIZE=$SIZE bash tests/perf/udp_vs_nginx.sh"
echo "loss-free ratio: $(awk -v s="$(best shardgate)" -v n="$(best nginx)" 'BEGIN { printf "%.2f", (n > 0) ? s / n : 0 }') (rates step by the RATES given)"
echo "CPU ratio: $(awk -v s="$CAP_shardgate" -v n="$CAP_nginx" 'BEGIN { printf "%.2f", (n > 0) ? s / n : 0 }') (datagrams/s one core relays, at $common/s)"
if [ "$(best shardgate)" -ge "$direct_best" ] || [ "$(best nginx)" -ge "$direct_best" ]; then
    echo "note: a proxy carried every rate the direct path did ($direct_best/s): the load generator's core"
    echo "      is the limit; the ratio below is from CPU per datagram"
    awk -v s="$CAP_shardgate" -v n="$CAP_nginx" 'BEGIN { printf "ratio: %.2f\n", (n > 0) ? s / n : 0 }'
else
    awk -v s="$(best shardgate)" -v n="$(best nginx)" 'BEGIN { printf "ratio: %.2f\n", (n > 0) ? s / n : 0 }'
fi
