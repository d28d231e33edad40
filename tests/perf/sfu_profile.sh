#!/usr/bin/env bash
# Where the SFU thread's time goes: runs tests/perf/sfu_load.sh at one step, samples the SFU's
# thread with perf (call graphs from DWARF; release builds carry line tables), and attributes
# each sample to the innermost crate on its stack: str0m, SRTP crypto (aws-lc), shardgate,
# tokio/quinn-udp, or the kernel (split by send, receive, and the rest). Allocation and copies
# (malloc, memmove) count for the crate that called them.
#
# NOT run by CI. Needs perf (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 1.
#
# Usage: tests/perf/sfu_profile.sh
# Environment (defaults in brackets): PARTICIPANTS [128] SAMPLE_SECONDS [5] FREQUENCY [999],
#   and sfu_load.sh's SFU_CPU, LOAD_CPU, SHARDGATE
# Output: sfu_load.sh's lines, then one line per category with its share of the samples, the
#   sample count, and the reproducing command.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PARTICIPANTS=${PARTICIPANTS:-128}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-5}
FREQUENCY=${FREQUENCY:-999}
command -v perf >/dev/null || { echo "perf is missing (Debian: apt-get install linux-perf)" >&2; exit 1; }

TMP=$(mktemp -d)
cleanup() {
    [ -n "${LOAD_RUN:-}" ] && kill "$LOAD_RUN" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# The step runs long enough for the warm-up, the sample, and some slack.
STEPS="$PARTICIPANTS" SECONDS_PER_STEP=$((SAMPLE_SECONDS + 12)) \
    bash "$ROOT/tests/perf/sfu_load.sh" > "$TMP/load.log" 2>&1 &
LOAD_RUN=$!

# Once every participant has joined (the SFU's peer gauge on sfu_load.sh's admin port) and sent
# for a few seconds, the SFU's thread (named "sfu") is sampled.
joined=0
for _ in $(seq 600); do
    joined=$(curl -s http://127.0.0.1:19390/metrics 2>/dev/null |
        awk '/^shardgate_sfu_peers\{role="participant"\}/ { print $2 }' || true)
    [ "${joined:-0}" -ge "$PARTICIPANTS" ] && break
    sleep 0.5
done
[ "${joined:-0}" -ge "$PARTICIPANTS" ] || { cat "$TMP/load.log" >&2; echo "the participants did not join" >&2; exit 1; }
sleep 4
tid=""
for t in /proc/"$(pgrep -nx shardgate)"/task/*; do
    [ "$(cat "$t/comm")" = sfu ] && tid=$(basename "$t")
done
[ -n "$tid" ] || { echo "the SFU thread was not found" >&2; exit 1; }

perf record -q -F "$FREQUENCY" --call-graph dwarf,16384 -t "$tid" -o "$TMP/perf.data" \
    -- sleep "$SAMPLE_SECONDS" 2>/dev/null
wait "$LOAD_RUN" || true
LOAD_RUN=""
grep -v "^# participants=" "$TMP/load.log"
perf script -i "$TMP/perf.data" --no-inline -F ip,sym 2>/dev/null > "$TMP/stacks.txt"

python3 - "$TMP/stacks.txt" <<'PY'
import collections, sys

samples, stack = [], []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        if stack:
            samples.append(stack)
        stack = []
        continue
    ip, _, sym = line.partition(" ")
    stack.append((ip, sym.strip()))
if stack:
    samples.append(stack)

CRATES = [
    ("str0m_aws_lc", "SRTP/DTLS crypto (aws-lc)"),
    ("aws_lc", "SRTP/DTLS crypto (aws-lc)"),
    ("skip_iv", "SRTP/DTLS crypto (aws-lc)"),
    ("str0m", "str0m"),
    ("is::", "str0m"),  # str0m's ICE agent
    ("shardgate", "shardgate"),
    ("prometheus", "shardgate"),
    ("tokio", "tokio, quinn-udp"),
    ("quinn_udp", "tokio, quinn-udp"),
]


def in_kernel(ip, sym):
    return ip.startswith("ffffffff") and sym != "[unknown]"


def category(stack):
    if in_kernel(*stack[0]):
        names = " ".join(sym for _, sym in stack)
        if "sendmmsg" in names or "sendmsg" in names:
            return "kernel: UDP send"
        if "recvmmsg" in names or "recvmsg" in names:
            return "kernel: UDP receive"
        return "kernel: other (timers, scheduling, polling)"
    for _, sym in stack:
        name = sym.lstrip("<")
        for prefix, crate in CRATES:
            if name.startswith(prefix):
                return crate
    return "unattributed"


counts = collections.Counter(category(s) for s in samples)
total = len(samples) or 1
for name, n in counts.most_common():
    print(f"{100 * n / total:5.1f} %  {name}")
print(f"samples: {len(samples)}")
PY
echo "# reproduce: PARTICIPANTS=$PARTICIPANTS SAMPLE_SECONDS=$SAMPLE_SECONDS FREQUENCY=$FREQUENCY bash tests/perf/sfu_profile.sh"
