#!/usr/bin/env python3
"""Where a handover between processes goes: the legs of the mean gap of the
`procs4`/`procs16` benchmark scenarios, for distlock with its line of
waiters.

Not part of any build. `scripts/handover-probe.patch` adds timestamps (wall
clock, nanoseconds, kept in memory and printed to stderr when a bench child
ends) at: the bench child's "released" and "acquired" stamps, every script
call's send and reply in the Redis backend, the grant message read by the
subscriber, and the queued `lock()` woken by it. Run it in a throw-away
worktree, so the probes never reach a commit:

    git worktree add /tmp/probe HEAD
    cd /tmp/probe && git apply scripts/handover-probe.patch
    DOCKER_HOST=unix:///nonexistent DISTLOCK_BENCH_SECS=2 \
      DISTLOCK_BENCH_ONLY=procs4 cargo bench -p distlock-examples \
      --bench redis > out.txt 2> probes.txt
    python3 scripts/handover-breakdown.py probes.txt

A handover counted here is one whose waiter saw, in order: the grant
message, the wake-up, its claim's send and reply, its "acquired" stamp. Its
holder is the process with the last "released" stamp before the grant
message. Stamps of one machine's processes share the wall clock, so the
legs across processes are comparable (to a microsecond or so).
"""
import bisect
import collections
import statistics
import sys

LEGS = [
    ("holder: released stamp -> release sent", "released", "send_release"),
    ("release sent -> grant message read by the waiter", "send_release", "grant"),
    ("waiter: grant message -> lock() woken", "grant", "woken"),
    ("waiter: woken -> claim sent", "woken", "send_claim"),
    ("waiter: the claim's round trip", "send_claim", "recv_claim"),
    ("waiter: claim reply -> acquired stamp", "recv_claim", "acquired"),
    ("gap: released stamp -> acquired stamp", "released", "acquired"),
]
WAITER_SEQ = ["grant-msg", "woken", "send-acquire", "recv-acquire", "acquired-stamp"]


def main(path):
    events = []
    for line in open(path):
        if line.startswith("probe "):
            _, t, pid, what = line.split()
            events.append((int(t), int(pid), what))
    # distlock's children are the ones that received grant messages
    pids = {p for _, p, w in events if w == "grant-msg"}
    events = sorted(e for e in events if e[1] in pids)
    by_pid = collections.defaultdict(list)
    for e in events:
        by_pid[e[1]].append(e)
    releases = [(t, p) for t, p, w in events if w == "released-stamp"]
    release_times = [t for t, _ in releases]
    legs = collections.defaultdict(list)
    release_rtts = []
    skipped = 0
    for pid, evs in by_pid.items():
        names = [w for _, _, w in evs]
        for i in range(len(evs) - 1):
            if names[i] == "send-release" and names[i + 1] == "recv-release":
                release_rtts.append(evs[i + 1][0] - evs[i][0])
        for i, (t, _, w) in enumerate(evs):
            if w != "acquired-stamp":
                continue
            if i < 4 or names[i - 4 : i + 1] != WAITER_SEQ:
                skipped += 1
                continue
            grant, woken, send_claim, recv_claim = (e[0] for e in evs[i - 4 : i])
            j = bisect.bisect_left(release_times, grant) - 1
            while j >= 0 and releases[j][1] == pid:
                j -= 1
            if j < 0:
                skipped += 1
                continue
            released, holder = releases[j]
            sends = [e[0] for e in by_pid[holder] if e[0] >= released and e[2] == "send-release"]
            if not sends:
                skipped += 1
                continue
            at = dict(released=released, send_release=sends[0], grant=grant, woken=woken,
                      send_claim=send_claim, recv_claim=recv_claim, acquired=t)
            for name, a, b in LEGS:
                legs[name].append(at[b] - at[a])
    print(f"handovers: {len(legs[LEGS[0][0]])} (acquisitions not in that shape: {skipped})")
    print()
    print("| leg | p50 | mean | p90 |")
    print("|---|---:|---:|---:|")
    for name, _, _ in LEGS:
        v = sorted(legs[name])
        if not v:
            continue
        print(f"| {name} | {v[len(v) // 2] / 1e3:.0f} µs | {statistics.mean(v) / 1e3:.0f} µs "
              f"| {v[int(len(v) * 0.9)] / 1e3:.0f} µs |")
    if release_rtts:
        v = sorted(release_rtts)
        print(f"| (holder: the release's round trip) | {v[len(v) // 2] / 1e3:.0f} µs "
              f"| {statistics.mean(v) / 1e3:.0f} µs | {v[int(len(v) * 0.9)] / 1e3:.0f} µs |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin")
