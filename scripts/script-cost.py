#!/usr/bin/env python3
"""Server cost of one lock + release cycle, by implementation.

Starts a dedicated `redis-server` (no persistence) on a free port, pipelines
N cycles over 64 lock names into it with `redis-cli --pipe`, and reads the
server's own accounting: `INFO cpu` (all server CPU, networking and
protocol parsing included), per cycle; `INFO commandstats` counts the
calls that check each cycle.
The client does not matter here: only the server's work is counted. Every
cycle is checked to have acquired and released.

Variants:
  floor       SET NX PX, then a token-checked DEL script (what rslock does)
  minimal     a fenced acquire script (SET NX PX + INCR) and a token-checked
              DEL script: the least any scripted, fenced design does
  distlock    distlock's acquire.lua and release.lua, run with EVALSHA
  functions   the same Lua loaded once as a Redis 7 FUNCTION library (FCALL)
  nop         two scripts that only `return 1` (EVALSHA): the fixed cost

Usage: python3 scripts/script-cost.py [N]   (default 100000 cycles)
Needs redis-server and redis-cli 7 on PATH.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backend-redis", "lua")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
NAMES = 64
ROUNDS = 3


def lua(name):
    with open(os.path.join(LUA, name)) as f:
        return f.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = str(free_port())


def cli(*args, stdin=None):
    out = subprocess.run(["redis-cli", "-p", PORT, *args], input=stdin,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def resp(*args):
    out = ["*%d\r\n" % len(args)]
    for a in args:
        a = str(a)
        out.append("$%d\r\n%s\r\n" % (len(a.encode()), a))
    return "".join(out)


def info(section):
    return dict(line.split(":", 1) for line in cli("INFO", section).splitlines()
                if ":" in line and not line.startswith("#"))


def server_cpu():
    i = info("cpu")
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])


def calls(command):
    """How many times `command` ran since the last reset (inside scripts too)."""
    stats = info("commandstats").get("cmdstat_" + command, "calls=0")
    return int(stats.split("calls=")[1].split(",")[0])


def main():
    lib, queue = lua("lib.lua"), lua("queue.lua")
    acquire, release = lib + lua("acquire.lua"), lib + queue + lua("release.lua")
    library = ("#!lua name=distlock_cost\n"
               + lib.replace("if redis.replicate_commands then pcall(redis.replicate_commands) end", "")
               + queue
               + "redis.register_function('acquire', function(KEYS, ARGV)\n" + lua("acquire.lua") + "\nend)\n"
               + "redis.register_function('release', function(KEYS, ARGV)\n" + lua("release.lua") + "\nend)\n")
    minimal_acquire = ("if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
                       "return redis.call('INCR', KEYS[2]) end return 0")
    checked_del = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
    sha = {name: cli("SCRIPT", "LOAD", src) for name, src in [
        ("acquire", acquire), ("release", release), ("minimal", minimal_acquire),
        ("checked_del", checked_del), ("nop", "return 1")]}
    cli("FUNCTION", "LOAD", "REPLACE", library)

    def cycle(kind, i):
        tok = "token%d" % i
        b = "{distlock:name%d}" % (i % NAMES)
        if kind == "nop":
            return resp("EVALSHA", sha["nop"], 0) + resp("EVALSHA", sha["nop"], 0)
        if kind == "floor":
            return (resp("SET", b, tok, "NX", "PX", 30000)
                    + resp("EVALSHA", sha["checked_del"], 1, b, tok))
        if kind == "minimal":
            return (resp("EVALSHA", sha["minimal"], 2, b, b + ":fence", tok, 30000)
                    + resp("EVALSHA", sha["checked_del"], 1, b, tok))
        akeys = [b, b + ":fence", b + ":owner", b + ":released-token:" + tok]
        rkeys = [b, b + ":owner", b + ":released-token:" + tok, b + ":fence", b + ":waiters", b + ":leases"]
        aargs = [tok, 30000, 86400000]
        rargs = [tok, b + ":released", b, 1000, "", 86400000]
        if kind == "distlock":
            return (resp("EVALSHA", sha["acquire"], len(akeys), *akeys, *aargs)
                    + resp("EVALSHA", sha["release"], len(rkeys), *rkeys, *rargs))
        return (resp("FCALL", "acquire", len(akeys), *akeys, *aargs)
                + resp("FCALL", "release", len(rkeys), *rkeys, *rargs))

    kinds = ["floor", "minimal", "distlock", "functions", "nop"]
    results = {k: [] for k in kinds}
    for _ in range(ROUNDS):
        for kind in kinds:
            stream = "".join(cycle(kind, i) for i in range(N))
            cli("FLUSHALL")
            cli("CONFIG", "RESETSTAT")
            cpu0 = server_cpu()
            cli("--pipe", stdin=stream)
            cpu1 = server_cpu()
            errors = int(info("stats").get("total_error_replies", "0"))
            if errors:
                sys.exit("%s: %d error replies" % (kind, errors))
            # Every cycle must have acquired and released (a lock left held
            # would make the next cycle's acquire cheap and the figure wrong).
            freed = calls("publish") if kind in ("distlock", "functions") else calls("del")
            if kind != "nop" and freed != N:
                sys.exit("%s: %d of %d cycles released" % (kind, freed, N))
            results[kind].append((cpu1 - cpu0) * 1e6 / N)
    median = {k: sorted(v)[ROUNDS // 2] for k, v in results.items()}
    print("| server CPU per lock + release cycle (median of %d rounds of %d cycles) "
          "| µs | ÷ floor |" % (ROUNDS, N))
    print("|---|---:|---:|")
    for kind in kinds:
        print("| %s | %.2f | %.2f |" % (kind, median[kind], median[kind] / median["floor"]))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(["redis-server", "--port", PORT, "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", d],
                                  stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    cli("PING")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.05)
            main()
        finally:
            server.terminate()
            server.wait()
