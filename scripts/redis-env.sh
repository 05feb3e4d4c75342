# Sourced by scripts/test.sh and .ci/run: makes sure the Redis tests and
# benchmarks can get a Redis server, and exports DISTLOCK_REDIS_IMAGE when a
# container image is to be used. Needs the repository root as the working
# directory.
# The Redis tests need Redis. They never skip: without one they fail and say
# how to get it. Order of preference (see backend-redis/src/testkit.rs):
# DISTLOCK_REDIS_URL, a Docker container of DISTLOCK_REDIS_IMAGE, redis-server
# from PATH.
# redis-server: the fallback server and the TLS/ACL tests' dedicated
# servers; redis-sentinel and redis-cli: the Sentinel group and the Cluster
# of the topology tests; openssl: the TLS tests' throwaway certificates.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-sentinel >/dev/null 2>&1 \
  || ! command -v redis-cli >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "== installing redis-server, redis-sentinel, redis-tools and openssl (Debian packages)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-sentinel redis-tools openssl >/dev/null
fi
if [ -z "${DISTLOCK_REDIS_URL:-}" ]; then
  if docker info >/dev/null 2>&1; then
    if [ -z "${DISTLOCK_REDIS_IMAGE:-}" ]; then
      # Use the official image if it is present or can be pulled; otherwise
      # build a local one from the Debian redis-server binary.
      if docker image inspect redis:7 >/dev/null 2>&1 || timeout 60 docker pull -q redis:7 >/dev/null 2>&1; then
        export DISTLOCK_REDIS_IMAGE=redis:7
      else
        export DISTLOCK_REDIS_IMAGE="$(bash scripts/build-redis-image.sh | tail -n 1)"
      fi
    fi
    echo "== Redis tests use the container image $DISTLOCK_REDIS_IMAGE"
  else
    echo "== no Docker engine: Redis tests use redis-server from PATH ($(command -v redis-server))"
  fi
fi

