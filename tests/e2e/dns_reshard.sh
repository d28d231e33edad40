#!/usr/bin/env bash
# End to end: shardgate finds its shards by DNS SRV from a real dnsmasq whose records change
# while 200 rooms are busy; no room may ever be answered by two shards.
#
#   bash tests/e2e/dns_reshard.sh        (SHARDGATE=path/to/binary to test another build)
#
# Three fake shards (tests/e2e/shard_backend.py, each answers `<name>\n`) and a fourth that is
# not in DNS yet; dnsmasq answers `_http._tcp.web.e2e.test` with SRV records for the listed ones
# (A records 127.0.0.1, TTL 1 s); shardgate re-resolves every 200 ms..2 s and lets a shard that
# left DNS linger 30 s for its rooms. While tests/e2e/room_client.py requests
# `/http-bind?room=room-<n>` for 200 rooms over and over, DNS changes three times, ~3 s apart:
# shard-2 leaves (its rooms must stay on it: it lingers), shard-3 joins (stuck rooms must not
# move to it), shard-2 comes back. Fails when a room was answered by two shards, when any
# request got something other than a 200, or when the whole run passes its time budget.
#
# Needs python3 and dnsmasq (Debian: apt-get install -y dnsmasq; the system service is not
# used: dnsmasq runs here in the foreground on a free loopback port). Everything binds
# 127.0.0.1. Every process started here is stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUDGET=170          # seconds for the whole run once the binary exists (watchdog)
ROOMS=200
WORKERS=16          # client connections
SETTLE=3            # seconds between DNS changes
SRV=_http._tcp.web.e2e.test
DOMAIN=web.e2e.test
TOKEN=e2e

SHARDGATE=${SHARDGATE:-target/debug/shardgate}
if [ ! -x "$SHARDGATE" ]; then
    echo "building $SHARDGATE"
    cargo build --quiet
fi
DNSMASQ=$(PATH="$PATH:/usr/sbin:/sbin" command -v dnsmasq || true)
if [ -z "$DNSMASQ" ]; then
    echo "dnsmasq not found; install it with: apt-get install -y dnsmasq" >&2
    exit 2
fi

t0=$(date +%s.%N)
elapsed() { python3 -c "import time; print(f'{time.time() - $t0:6.2f}s')"; }
log() { printf '[%s] %s\n' "$(elapsed)" "$*"; }

work=$(mktemp -d)
# dnsmasq may drop root for another user, and re-reads its hosts file as that user on SIGHUP.
chmod 755 "$work"

pids=()             # backends, shardgate, client, watchdog
dns_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}" $dns_pid; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}" $dns_pid; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "--- failed (exit $status); shardgate log (last 40 lines):"
        tail -n 40 "$work/shardgate.log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' || true
        echo "--- dnsmasq log (last 15 lines):"
        tail -n 15 "$work/dnsmasq.log" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "time budget of ${BUDGET}s exceeded" >&2; exit 124' TERM

# Watchdog: SIGTERM to this script when the budget is spent (the TERM trap then exits and the
# EXIT trap cleans up). Its sleep is killed with it.
(
    sleep "$BUDGET" &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $!
    kill -TERM $$ 2>/dev/null
) &
pids+=($!)

fail() {
    log "FAIL: $*" >&2
    exit 1
}

# Waits up to $1 seconds for the command "${@:2}" to succeed (gives up early when it returns 2).
wait_for() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit)) status
    while true; do
        status=0
        "$@" || status=$?
        [ "$status" -eq 0 ] && return 0
        # 2 from the condition: it can no longer become true.
        [ "$status" -ne 2 ] && [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

# A port free for both TCP and UDP on 127.0.0.1 (bound, then released for the caller).
free_port() {
    python3 - <<'EOF'
import socket
while True:
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        u.close()
        t.close()
    print(port)
    break
EOF
}

# --- shards -----------------------------------------------------------------------------------
port_of=()
for n in 0 1 2 3; do
    python3 tests/e2e/shard_backend.py "shard-$n" "$work/shard-$n.port" &
    pids+=($!)
done
for n in 0 1 2 3; do
    wait_for 10 test -s "$work/shard-$n.port" || fail "shard-$n did not start"
    port_of[n]=$(cat "$work/shard-$n.port")
done
log "shards: shard-0..3 on 127.0.0.1 ports ${port_of[*]}"

# --- dnsmasq ----------------------------------------------------------------------------------
# SRV records live in a generated conf file and A records in an --addn-hosts file. dnsmasq
# re-reads addn-hosts on SIGHUP but never its conf files (man dnsmasq, NOTES: "SIGHUP does NOT
# re-read the configuration file"), and --srv-host exists only as a conf/command-line option,
# so a change of SRV records needs a restart on the same port: that is how "reloading" dnsmasq
# works here when the SRV set changes; a change of A records only gets a SIGHUP.
# --local=/e2e.test/ answers NXDOMAIN for other names of the zone (there is no upstream).
dns_port=$(free_port)
dns_starts=0
start_dns() {
    cp "$work/srv.conf" "$work/srv.conf.running"
    # A few attempts: on a restart, another test's port probe may hold the port for a moment.
    for _ in 1 2 3 4 5; do
        "$DNSMASQ" --no-daemon --conf-file="$work/srv.conf" --no-resolv --no-hosts \
            --port="$dns_port" --listen-address=127.0.0.1 --bind-interfaces \
            --addn-hosts="$work/hosts" --local-ttl=1 --local=/e2e.test/ \
            --pid-file="$work/dnsmasq.pid" --log-facility=- >>"$work/dnsmasq.log" 2>&1 &
        dns_pid=$!
        dns_starts=$((dns_starts + 1))
        # Up once this process has logged that it read the hosts file (after binding its port).
        if wait_for 10 dns_started; then
            return 0
        fi
        wait "$dns_pid" 2>/dev/null || true
        dns_pid=""
        sleep 0.3
    done
    fail "dnsmasq did not start on port $dns_port: $(tail -n 3 "$work/dnsmasq.log")"
}
# 0 once the last started dnsmasq is up; 1 while it starts; 2 (wait_for gives up) when it died.
dns_started() {
    grep -qF "dnsmasq[$dns_pid]: read $work/hosts" "$work/dnsmasq.log" && return 0
    kill -0 "$dns_pid" 2>/dev/null || return 2
    return 1
}
stop_dns() {
    kill "$dns_pid"
    wait "$dns_pid" 2>/dev/null || true
    dns_pid=""
}

# Publishes the shards given by number (e.g. `publish 0 1 3`) and reloads dnsmasq.
publish() {
    : >"$work/srv.conf.new"
    : >"$work/hosts.new"
    for n in "$@"; do
        echo "srv-host=$SRV,shard-$n.$DOMAIN,${port_of[$n]},10,50" >>"$work/srv.conf.new"
        echo "127.0.0.1 shard-$n.$DOMAIN" >>"$work/hosts.new"
    done
    chmod 644 "$work/srv.conf.new" "$work/hosts.new"
    mv "$work/srv.conf.new" "$work/srv.conf"
    mv "$work/hosts.new" "$work/hosts"
    if [ -z "$dns_pid" ]; then
        start_dns
    elif cmp -s "$work/srv.conf" "$work/srv.conf.running"; then
        kill -HUP "$dns_pid"
    else
        stop_dns
        start_dns
    fi
}

publish 0 1 2
log "dnsmasq: 127.0.0.1:$dns_port answers $SRV with shard-0, shard-1, shard-2"

# --- shardgate --------------------------------------------------------------------------------
http_port=$(free_port)
admin_port=$(free_port)
cat >"$work/shardgate.toml" <<EOF
[[listener]]
addr = "127.0.0.1:$http_port"

[admin]
addr = "127.0.0.1:$admin_port"
token = "$TOKEN"

[resolver]
nameservers = ["127.0.0.1:$dns_port"]
min_ttl = "200ms"
max_ttl = "2s"
timeout = "300ms"

[[pool]]
name = "shards"
shards.srv = "$SRV."
linger = "30s"

[[route]]
path_prefix = "/"
shard = { pool = "shards" }
EOF
SHARDGATE_THREADS=${SHARDGATE_THREADS:-4} "$SHARDGATE" run --config "$work/shardgate.toml" \
    >"$work/shardgate.log" 2>&1 &
pids+=($!)
sg_pid=$!

admin() {
    curl -fsS --max-time 2 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$admin_port$1"
}
ready_with() {
    kill -0 "$sg_pid" 2>/dev/null || fail "shardgate exited"
    local body
    body=$(admin /readyz 2>/dev/null) || return 1
    [[ "$body" == *"$1"* ]]
}
# `name=state` of each shard of pool shards, sorted, on one line.
states() {
    local json
    json=$(admin /admin/shards 2>/dev/null) || return 1
    python3 -c '
import json, sys
for p in json.loads(sys.argv[1])["pools"]:
    if p["pool"] == "shards":
        print(" ".join(sorted(s["name"] + "=" + s["state"] for s in p["shards"])))
' "$json"
}
# Rooms stuck to each shard, as the admin API counts them.
rooms_per_shard() {
    local json
    json=$(admin /admin/shards 2>/dev/null) || return 1
    python3 -c '
import json, sys
for p in json.loads(sys.argv[1])["pools"]:
    if p["pool"] == "shards":
        print(", ".join(s["name"] + "=" + str(s["rooms"]) for s in p["shards"]))
' "$json"
}
states_are() {
    kill -0 "$sg_pid" 2>/dev/null || fail "shardgate exited"
    [ "$(states || true)" = "$*" ]
}

wait_for 30 ready_with "pool shards: 3/3 shards up" ||
    fail "shardgate never had 3/3 shards up; /readyz: $(admin /readyz || true)"
log "shardgate: 127.0.0.1:$http_port, admin 127.0.0.1:$admin_port: $(admin /readyz | grep 'pool shards')"

# --- rooms --------------------------------------------------------------------------------------
python3 tests/e2e/room_client.py "http://127.0.0.1:$http_port" "$ROOMS" "$WORKERS" "$t0" \
    "$work/warm" "$work/stop" >"$work/client.out" 2>&1 &
pids+=($!)
client_pid=$!
wait_for 30 test -s "$work/warm" || fail "the client did not request every room within 30 s"
log "client: every room requested once (rooms stuck); $WORKERS connections keep all $ROOMS busy"
sleep "$SETTLE"

up="up"
gone="draining (gone from DNS)"
s() { echo "shard-$1.$DOMAIN"; }

publish 0 1
log "dnsmasq reloaded: shard-2 removed"
wait_for 10 states_are "$(s 0)=$up $(s 1)=$up $(s 2)=$gone" ||
    fail "shard-2 should linger; shards: $(states || true)"
log "shardgate: shard-2 lingers: $(states)"
sleep "$SETTLE"

publish 0 1 3
log "dnsmasq reloaded: shard-3 added"
wait_for 10 states_are "$(s 0)=$up $(s 1)=$up $(s 2)=$gone $(s 3)=$up" ||
    fail "shard-3 should be up and shard-2 lingering; shards: $(states || true)"
log "shardgate: $(states)"
sleep "$SETTLE"

publish 0 1 2 3
log "dnsmasq reloaded: shard-2 back"
wait_for 10 states_are "$(s 0)=$up $(s 1)=$up $(s 2)=$up $(s 3)=$up" ||
    fail "all four shards should be up; shards: $(states || true)"
log "shardgate: $(states)"
sleep "$SETTLE"

touch "$work/stop"
client_status=0
wait "$client_pid" || client_status=$?
log "client stopped (dnsmasq started $dns_starts times)"
echo "stick table (admin API): $(rooms_per_shard || echo unavailable)"
grep -E 'members changed|WARN|ERROR' "$work/shardgate.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/  shardgate: /' || true
cat "$work/client.out"
if [ "$client_status" -ne 0 ]; then
    fail "rooms split across shards or requests failed (see above)"
fi
log "PASS"
