#!/usr/bin/env python3
"""Keeps rooms busy through shardgate and records which shard answered each room, and when.

usage: room_client.py BASE_URL ROOMS WORKERS T0 WARM_FILE STOP_FILE

Requests `BASE_URL/http-bind?room=room-<n>` for n in 0..ROOMS, round after round, from WORKERS
threads (each owns the rooms n with n % WORKERS == its index, over one keep-alive connection),
until STOP_FILE exists. WARM_FILE is created once every room has been requested once (so every
room is stuck to a shard). Times are printed in seconds since T0 (a Unix time, the caller's
start). At the end prints a report and exits 1 when a room was answered by two different
shards, when any request did not get a 200, or when nothing was requested.
"""

import http.client
import os
import sys
import threading
import time
import urllib.parse


class Worker:
    def __init__(self, host: str, port: int, rooms: list) -> None:
        self.host, self.port, self.rooms = host, port, rooms
        self.requests = 0
        self.failures = []  # (time, room, status or error, body)
        # room -> shard -> [first time, last time, count]
        self.seen = {room: {} for room in rooms}
        self.rounds = 0
        self.conn = None

    def request(self, room: str):
        """(status, body) or (error text, "") for one request on the kept-alive connection."""
        path = "/http-bind?room=" + urllib.parse.quote(room)
        while True:
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read().decode(errors="replace")
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, body
            except (http.client.HTTPException, OSError) as e:
                self.conn.close()
                self.conn = None
                # A kept-alive connection the edge closed between two requests is retried once
                # on a fresh connection, as any client does; a failure on a fresh one counts.
                if reused and isinstance(
                    e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                ):
                    continue
                return f"{type(e).__name__}: {e}", ""

    def run(self, t0: float, stop_file: str, warm: threading.Barrier) -> None:
        first = True
        while not os.path.exists(stop_file):
            for room in self.rooms:
                status, body = self.request(room)
                now = time.time() - t0
                self.requests += 1
                if status != 200:
                    self.failures.append((now, room, status, body.strip()[:200]))
                    continue
                shard = body.strip()
                entry = self.seen[room].setdefault(shard, [now, now, 0])
                entry[1] = now
                entry[2] += 1
            self.rounds += 1
            if first:
                first = False
                try:
                    warm.wait(timeout=60)
                except threading.BrokenBarrierError:
                    pass
        if self.conn is not None:
            self.conn.close()


def main() -> int:
    base, rooms, workers, t0, warm_file, stop_file = sys.argv[1:7]
    url = urllib.parse.urlsplit(base)
    rooms, workers, t0 = int(rooms), int(workers), float(t0)
    names = [f"room-{n}" for n in range(rooms)]
    pool = [
        Worker(url.hostname, url.port, [r for i, r in enumerate(names) if i % workers == w])
        for w in range(workers)
    ]

    def all_warm() -> None:
        with open(warm_file, "w") as f:
            f.write(f"{time.time() - t0:.2f}\n")

    warm = threading.Barrier(workers, action=all_warm)
    threads = [
        threading.Thread(target=w.run, args=(t0, stop_file, warm), daemon=True) for w in pool
    ]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started

    seen = {}
    for w in pool:
        seen.update(w.seen)
    total = sum(w.requests for w in pool)
    failures = sorted(f for w in pool for f in w.failures)
    per_shard = {}
    for shards in seen.values():
        for shard, (_, _, count) in shards.items():
            per_shard[shard] = per_shard.get(shard, 0) + count
    rooms_of = {}
    for room, shards in seen.items():
        if len(shards) == 1:
            rooms_of.setdefault(next(iter(shards)), []).append(room)
    split = {room: shards for room, shards in seen.items() if len(shards) > 1}
    unanswered = [room for room, shards in seen.items() if not shards]

    print(f"client: {total} requests in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f}/s), "
          f"{min(w.rounds for w in pool)}+ rounds over {rooms} rooms, {workers} connections")
    print("requests per shard: " + ", ".join(f"{s}={n}" for s, n in sorted(per_shard.items())))
    print("rooms per shard: " + ", ".join(f"{s}={len(r)}" for s, r in sorted(rooms_of.items())))
    for room in sorted(split, key=lambda r: int(r.split("-")[1]))[:20]:
        detail = "; ".join(
            f"{shard} x{count} from {first:.2f}s to {last:.2f}s"
            for shard, (first, last, count) in sorted(split[room].items(), key=lambda kv: kv[1][0])
        )
        print(f"  split room {room}: {detail}")
    for when, room, status, body in failures[:20]:
        print(f"  failed request at {when:.2f}s: {room}: {status} {body!r}")
    print(f"rooms served by two shards at once: {len(split)}")
    print(f"total requests: {total}, non-200: {len(failures)}")
    if unanswered:
        print(f"rooms never answered: {len(unanswered)}")
    ok = not split and not failures and not unanswered and total > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
