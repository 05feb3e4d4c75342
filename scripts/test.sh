#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes sure a Redis image (or
# a redis-server binary) is available for the Redis tests, then runs
# `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/redis-env.sh

cleanup() {
  # Shared test containers live in statics that are never dropped; remove them.
  if docker info >/dev/null 2>&1; then
    ids=$(docker ps -aq --filter label=distlock.test 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# Every conformance case must run here: a skipped case fails.
export DISTLOCK_CONFORMANCE_NO_SKIP=1

cargo test --workspace --all-features "$@"
