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
# Three parts, each path loaded for DURATION seconds per run with FLOWS client sockets:
# 1. Rising RATES, each path (direct to the echo, through nginx, through shardgate): loss,
#    p50/p99 of the round trip, and the proxy's CPU time, from which its CPU per relayed
#    datagram at the highest rate both carry loss-free (the "CPU ratio").
# 2. Latency: LATENCY_ROUNDS rounds at LATENCY_RATE of direct, the floor (the simplest relay,
#    `udp_load forward`, on the proxies' CPU), nginx and shardgate; medians over the rounds of
#    each path's p50 and p99, and what each adds over direct. The floor's is what the hop to the
#    other CPU costs on this machine, whatever the relay.
# 3. Throughput with the proxy as the limit: each proxy in a cgroup of its own allowed
#    CPU_QUOTA % of a core (unbounded, either outruns the load generator's core), its highest
#    rate with < 0.1 % loss found by bisection (SEARCH_STEPS steps, the proxies alternating).
#    Needs root and cgroups' cpu controller; CPU_QUOTA=0 skips it.
# The ratio is of part 3's loss-free rates (without part 3: of part 1's, or the CPU ratio when a
# proxy carried every rate the direct path did). nginx's listening socket gets the receive
# buffer shardgate's public sockets ask for (1 MiB).
#
# Usage: tests/perf/udp_vs_nginx.sh
# Environment (defaults in brackets): RATES ["25000 50000 100000 150000 200000"] DURATION [3]
#   FLOWS [16] SIZE [200] PROXY_CPU [0] LOAD_CPU [1] CPU_QUOTA [25] SEARCH_STEPS [8]
#   LATENCY_RATE [40000] LATENCY_ROUNDS [5] KEEP_TMP [0]
# Output: one line per run, the summary per part, the reproducing command, and last
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
CPU_QUOTA=${CPU_QUOTA:-25}
SEARCH_STEPS=${SEARCH_STEPS:-8}
LATENCY_RATE=${LATENCY_RATE:-40000}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-5}
NGINX=${NGINX:-/usr/sbin/nginx}
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
ECHO_PORT=19000 FLOOR_PORT=19050 NGINX_PORT=19100 RELAY_PORT=19200 HTTP_PORT=19280 ADMIN_PORT=19290

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
CGROUPS=()
cleanup() {
    # SIGINT for shardgate: it exits at once (SIGTERM keeps its ports for shutdown_delay).
    [ -n "${SG_PID:-}" ] && kill -INT "$SG_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    for d in "${CGROUPS[@]}"; do rmdir "$d" 2>/dev/null || true; done
    if [ "$KEEP_TMP" = 1 ]; then echo "# kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

taskset -c "$LOAD_CPU" "$LOAD" echo "127.0.0.1:$ECHO_PORT" & PIDS+=($!)
# The latency floor: the simplest relay (blocking sockets, a thread per client), on the proxies' CPU.
taskset -c "$PROXY_CPU" "$LOAD" forward "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$ECHO_PORT" & PIDS+=($!)

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

# One run of the load generator against a port at a rate: its result line.
load() { taskset -c "$LOAD_CPU" "$LOAD" run "127.0.0.1:$1" "$2" "$DURATION" "$FLOWS" "$SIZE"; }
# A field of a result line (loss_pct, p50_us, p99_us, received).
field() { sed -E "s/.*$1=([0-9.]+).*/\1/" <<<"$2"; }

declare -A LOSS CPU RECEIVED
measure() { # name port pid
    local name=$1 port=$2 pid=$3 rate=$4 before after line
    before=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    line=$(load "$port" "$rate")
    after=$([ -n "$pid" ] && cpu_secs "$pid" || echo 0)
    LOSS[$name,$rate]=$(field loss_pct "$line")
    RECEIVED[$name,$rate]=$(field received "$line")
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
    echo "$name at $common/s: CPU ${per} us per datagram (one core: ~${cap} datagrams/s)"
    eval "CAP_$name=$cap"
done
# Latency: one round of the four paths (direct; the floor, the simplest relay there is, on the
# proxies' CPU; nginx; shardgate) at LATENCY_RATE, LATENCY_ROUNDS times. Each path's p50 and
# p99 are the medians over its rounds (a single p99 on a shared VM swings by milliseconds from
# one run to the next); the added latency is a path's minus direct's. The floor's is what the
# second CPU costs (waking it, the extra hop through loopback), whatever the relay.
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A RUN_P50 RUN_P99
echo
echo "# latency: $LATENCY_ROUNDS rounds at $LATENCY_RATE/s"
for round in $(seq "$LATENCY_ROUNDS"); do
    for path in direct:$ECHO_PORT floor:$FLOOR_PORT nginx:$NGINX_PORT shardgate:$RELAY_PORT; do
        name=${path%%:*}
        line=$(load "${path#*:}" "$LATENCY_RATE")
        printf '%-9s round=%s rate=%-7s %s\n' "$name" "$round" "$LATENCY_RATE" "$line"
        RUN_P50[$name]+="$(field p50_us "$line") "
        RUN_P99[$name]+="$(field p99_us "$line") "
    done
done
declare -A MED50 MED99
for name in direct floor nginx shardgate; do
    MED50[$name]=$(median <<<"${RUN_P50[$name]% }") MED99[$name]=$(median <<<"${RUN_P99[$name]% }")
done
for name in floor nginx shardgate; do
    echo "$name at $LATENCY_RATE/s (medians of $LATENCY_ROUNDS rounds): p50 ${MED50[$name]} us, p99 ${MED99[$name]} us;" \
        "added over direct (p50 ${MED50[direct]}, p99 ${MED99[direct]} us): p50 $((MED50[$name] - MED50[direct])) us, p99 $((MED99[$name] - MED99[direct])) us"
done

# Throughput with the proxy as the limit. Unbounded, a proxy on its own core outruns the load
# generator's core (it then carries every rate the direct path does), so each proxy is put in a
# cgroup of its own that may use CPU_QUOTA % of a core (in 10 ms periods), the same budget for
# both, and its highest loss-free rate is found by bisection between 0 and the direct path's
# highest loss-free rate, the two proxies' steps alternating. The ratio of those rates is the
# ratio of round trips (datagrams) per second each relays on the same CPU.
cgroup_for() { # name: prints a new cgroup directory limited to CPU_QUOTA % of a core
    local d
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        d=/sys/fs/cgroup/udp-bench-$1-$$
        echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        mkdir "$d" 2>/dev/null && echo "$((CPU_QUOTA * 100)) 10000" > "$d/cpu.max" 2>/dev/null || return 1
    elif [ -d /sys/fs/cgroup/cpu ]; then
        d=/sys/fs/cgroup/cpu/udp-bench-$1-$$
        mkdir "$d" 2>/dev/null && echo 10000 > "$d/cpu.cfs_period_us" &&
            echo "$((CPU_QUOTA * 100))" > "$d/cpu.cfs_quota_us" 2>/dev/null || return 1
    else
        return 1
    fi
    echo "$d"
}
quota_ok=0
if [ "$CPU_QUOTA" -gt 0 ] && ng_cg=$(cgroup_for nginx) && sg_cg=$(cgroup_for shardgate); then
    CGROUPS+=("$ng_cg" "$sg_cg")
    for p in "$(cat "$TMP/nginx.pid")" "$NGINX_WORKER"; do echo "$p" > "$ng_cg/cgroup.procs"; done
    echo "$SG_PID" > "$sg_cg/cgroup.procs"
    quota_ok=1
elif [ "$CPU_QUOTA" -gt 0 ]; then
    echo "note: cannot make CPU-limited cgroups (needs root and the cpu controller): no quota runs"
fi
if [ "$quota_ok" = 1 ]; then
    echo
    echo "# each proxy limited to $CPU_QUOTA % of a core; bisection for the highest loss-free rate"
    declare -A LO HI
    # The generator's own limit bounds the search (the highest rate tried if it lost at all).
    top=$direct_best
    [ "$top" -gt 0 ] || top=$(tr ' ' '\n' <<<"$RATES" | sort -n | tail -1)
    for name in nginx shardgate; do LO[$name]=0 HI[$name]=$top; done
    for _ in $(seq "$SEARCH_STEPS"); do
        for name in nginx shardgate; do
            port=$([ "$name" = nginx ] && echo "$NGINX_PORT" || echo "$RELAY_PORT")
            mid=$(( (LO[$name] + HI[$name]) / 2 ))
            line=$(load "$port" "$mid")
            printf '%-9s quota=%s%% rate=%-7s %s\n' "$name" "$CPU_QUOTA" "$mid" "$line"
            if ok "$(field loss_pct "$line")"; then LO[$name]=$mid; else HI[$name]=$mid; fi
        done
    done
    echo "at $CPU_QUOTA % of a core, loss-free up to: nginx ${LO[nginx]}/s, shardgate ${LO[shardgate]}/s" \
        "(round trips; per core about $((LO[nginx] * 200 / CPU_QUOTA)) and $((LO[shardgate] * 200 / CPU_QUOTA)) datagrams/s relayed)"
    for name in nginx shardgate; do
        [ $((HI[$name] - LO[$name])) -lt $((top / 50 + 1)) ] && [ "${HI[$name]}" = "$top" ] &&
            echo "note: $name carried nearly every rate the direct path did; lower CPU_QUOTA"
    done
fi
echo "reproduce: RATES=\"$RATES\" DURATION=$DURATION FLOWS=$FLOWS SIZE=$SIZE CPU_QUOTA=$CPU_QUOTA SEARCH_STEPS=$SEARCH_STEPS LATENCY_RATE=$LATENCY_RATE LATENCY_ROUNDS=$LATENCY_ROUNDS bash tests/perf/udp_vs_nginx.sh"
echo "loss-free ratio: $(awk -v s="$(best shardgate)" -v n="$(best nginx)" 'BEGIN { printf "%.2f", (n > 0) ? s / n : 0 }') (unlimited proxies; rates step by the RATES given)"
echo "CPU ratio: $(awk -v s="$CAP_shardgate" -v n="$CAP_nginx" 'BEGIN { printf "%.2f", (n > 0) ? s / n : 0 }') (datagrams/s one core relays, from CPU time at $common/s)"
if [ "$quota_ok" = 1 ]; then
    awk -v s="${LO[shardgate]}" -v n="${LO[nginx]}" -v q="$CPU_QUOTA" 'BEGIN {
        printf "quota ratio: %.2f (loss-free rates at %s %% of a core each)\n", (n > 0) ? s / n : 0, q
        printf "ratio: %.2f\n", (n > 0) ? s / n : 0 }'
elif [ "$(best shardgate)" -ge "$direct_best" ] || [ "$(best nginx)" -ge "$direct_best" ]; then
    echo "note: a proxy carried every rate the direct path did ($direct_best/s): the load generator's core"
    echo "      is the limit; the ratio below is from CPU per datagram"
    awk -v s="$CAP_shardgate" -v n="$CAP_nginx" 'BEGIN { printf "ratio: %.2f\n", (n > 0) ? s / n : 0 }'
else
    awk -v s="$(best shardgate)" -v n="$(best nginx)" 'BEGIN { printf "ratio: %.2f\n", (n > 0) ? s / n : 0 }'
fi
