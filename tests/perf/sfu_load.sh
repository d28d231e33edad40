#!/usr/bin/env bash
# SFU capacity: synthetic participants (examples/sfu_load.rs: str0m clients on real UDP sockets
# on loopback, joined over shardgate's WebSocket signalling) in rooms of 4, each sending audio
# (50 frames/s) and video (~500 kbit/s, 30 frames/s, about Jitsi's measured average per
# endpoint). The number of participants rises step by step until forwarded loss exceeds 1 %, or
# the SFU's thread saturates its core, or the load generator saturates its CPUs (past that a
# step measures the generator, not the SFU).
#
# NOT run by CI. A manual benchmark for a 2-core (or larger) Linux box:
#   CPU 0 (SFU_CPU):  shardgate (the SFU runs on one thread of its own)
#   CPU 1 (LOAD_CPU): the load generator (a list such as 1-3 gives it more CPUs and threads)
# Each step measures, over its window, the SFU thread's CPU time and the RTP packets it sent
# (shardgate_sfu_rtp_packets_total{direction="out"}), and the frame loss the participants saw.
# The load generator does about the SFU's work per participant (SRTP both ways, and it
# depacketizes), so on two cores it saturates first (at about 190 participants on the 2-core
# VM): the SFU's per-core figures are then taken at that load.
#
# Usage: tests/perf/sfu_load.sh
# Environment (defaults in brackets): STEPS ["8 16 32 64 96 128 160 192 256 320 384 512"]
#   SECONDS_PER_STEP [8]
#   SFU_CPU [0] LOAD_CPU [1] SHARDGATE [this checkout's release build; another binary for
#   side-by-side runs of two builds]
# Output: one line per step, the reproducing command, and last
#   participants_per_vcpu: N
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEPS=${STEPS:-"8 16 32 64 96 128 160 192 256 320 384 512"}
SECONDS_PER_STEP=${SECONDS_PER_STEP:-8}
SFU_CPU=${SFU_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
HTTP_PORT=19380 ADMIN_PORT=19390 UDP_PORT=19400
WARMUP=4

LOAD_CPUS=$(taskset -c "$LOAD_CPU" nproc)
[ "$(nproc)" -ge 2 ] || echo "WARNING: one CPU: SFU and load share it; figures are not meaningful" >&2

echo "# building (release)"
(cd "$ROOT" && cargo build --release --quiet --bin shardgate --example sfu_load)
SHARDGATE=${SHARDGATE:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"}
LOAD="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/sfu_load"

TMP=$(mktemp -d)
cleanup() {
    [ -n "${SG_PID:-}" ] && kill -INT "$SG_PID" 2>/dev/null || true
    [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/shardgate.toml" <<CONF
[[listener]]
addr = "127.0.0.1:$HTTP_PORT"

[admin]
addr = "127.0.0.1:$ADMIN_PORT"

[sfu]
udp = "127.0.0.1:$UDP_PORT"
max_rooms = 1000
max_peers_per_room = 4

[[route]]
path_prefix = "/"
sfu = true
CONF
RUST_LOG=warn SHARDGATE_THREADS=1 taskset -c "$SFU_CPU" "$SHARDGATE" run --config "$TMP/shardgate.toml" \
    2> "$TMP/shardgate.log" &
SG_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null && break
    sleep 0.1
done

hz=$(getconf CLK_TCK)
# CPU ticks (user + system) of the SFU's thread (named "sfu").
sfu_ticks() {
    for t in /proc/"$SG_PID"/task/*; do
        if [ "$(cat "$t/comm")" = sfu ]; then awk '{ print $14 + $15 }' "$t/stat"; return; fi
    done
    echo 0
}
# CPU ticks of a whole process.
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
packets_out() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^shardgate_sfu_rtp_packets_total\{direction="out"\}/ { print $2 }'
}

printf '%-12s %10s %9s %9s %12s %14s %13s\n' participants loss_% sfu_cpu load_cpu rtp_out/s rtp_out/s/core part/vcpu
best_parts=0 best_cpu=0 best_pps=0 limit="the last step"
for n in $STEPS; do
    taskset -c "$LOAD_CPU" "$LOAD" --url "ws://127.0.0.1:$HTTP_PORT/ws" --participants "$n" \
        --threads "$LOAD_CPUS" --seconds "$SECONDS_PER_STEP" --rooms "step$n" > "$TMP/load.out" 2> "$TMP/load.err" &
    LOAD_PID=$!
    sleep $((WARMUP + 1))
    t0=$(date +%s.%N) s0=$(sfu_ticks) l0=$(proc_ticks "$LOAD_PID") p0=$(packets_out)
    sleep $((SECONDS_PER_STEP - 2))
    t1=$(date +%s.%N) s1=$(sfu_ticks) l1=$(proc_ticks "$LOAD_PID") p1=$(packets_out)
    wait "$LOAD_PID" || true
    LOAD_PID=
    line=$(cat "$TMP/load.out")
    loss=$(sed -n 's/.*loss=\([0-9.]*\)%.*/\1/p' <<< "$line")
    [ -n "$loss" ] || { echo "load failed: $(head -3 "$TMP/load.err")"; loss=100; }
    [ -s "$TMP/load.err" ] && echo "# load generator: $(sort "$TMP/load.err" | uniq -c | head -3)"
    echo "# $line"
    read -r sfu_cpu load_cpu pps per_core per_vcpu < <(awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" \
        -v l0="$l0" -v l1="$l1" -v p0="$p0" -v p1="$p1" -v hz="$hz" -v n="$n" 'BEGIN {
            dt = t1 - t0; sc = (s1 - s0) / hz / dt; lc = (l1 - l0) / hz / dt; pps = (p1 - p0) / dt
            printf "%.3f %.3f %.0f %.0f %.0f\n", sc, lc, pps, (sc > 0 ? pps / sc : 0), (sc > 0 ? n / sc : 0) }')
    printf '%-12s %10s %9s %9s %12s %14s %13s\n' "$n" "$loss" "$sfu_cpu" "$load_cpu" "$pps" "$per_core" "$per_vcpu"
    if awk -v l="$loss" 'BEGIN { exit !(l > 1) }'; then
        limit="loss above 1 % at $n participants (load generator's CPU: $load_cpu)"
        break
    fi
    best_parts=$n best_cpu=$sfu_cpu best_pps=$pps
    if awk -v c="$sfu_cpu" 'BEGIN { exit !(c > 0.95) }'; then
        limit="the SFU's core saturated at $n participants"
        break
    fi
    if awk -v c="$load_cpu" -v n="$LOAD_CPUS" 'BEGIN { exit !(c > 0.95 * n) }'; then
        limit="the load generator's CPU saturated at $n participants (more would measure it)"
        break
    fi
done

echo "# stopped by: $limit"
echo "# reproduce: STEPS=\"$STEPS\" SECONDS_PER_STEP=$SECONDS_PER_STEP bash tests/perf/sfu_load.sh"
awk -v n="$best_parts" -v c="$best_cpu" -v p="$best_pps" 'BEGIN {
    printf "forwarded_pps_per_core: %.0f (at %d participants, SFU thread %.3f of a core)\n", (c > 0 ? p / c : 0), n, c
    printf "participants_per_vcpu: %.0f\n", (c > 0 ? n / c : 0) }'
