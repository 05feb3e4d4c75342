#!/usr/bin/env bash
# Builds a local Docker image that runs redis-server, for machines that cannot
# pull images (the Redis tests start it with testcontainers).
#
# The image is FROM scratch and holds /usr/bin/redis-server, every library
# `ldd` lists for it and the dynamic loader; its entrypoint is redis-server.
# redis-server is installed with apt-get when missing. Idempotent: an image
# that already exists under the name is kept (set DISTLOCK_REBUILD=1 to
# rebuild). The last line printed is the image name:
#
#   export DISTLOCK_REDIS_IMAGE="$(bash scripts/build-redis-image.sh | tail -n 1)"
#
# Name: $DISTLOCK_REDIS_IMAGE, default distlock-redis:7-local.
set -euo pipefail

image="${DISTLOCK_REDIS_IMAGE:-distlock-redis:7-local}"
case "$image" in
  *:*) ;;
  *) image="$image:latest" ;;
esac

if ! docker info >/dev/null 2>&1; then
  echo "build-redis-image: no Docker engine is reachable" >&2
  exit 1
fi

if [ "${DISTLOCK_REBUILD:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-redis-image: $image already exists" >&2
  echo "$image"
  exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "build-redis-image: installing redis-server with apt-get" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
fi
server="$(readlink -f "$(command -v redis-server)")"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT

copy() { # copy FILE into the context at its own path, resolving symlinks
  mkdir -p "$context$(dirname "$1")"
  cp -L "$1" "$context$1"
}

mkdir -p "$context/usr/bin"
cp -L "$server" "$context/usr/bin/redis-server"
# Libraries (`name => /path (addr)`) and the loader (`/lib64/ld-linux… (addr)`).
ldd "$server" | awk '
  $2 == "=>" && $3 ~ /^\// { print $3 }
  $1 ~ /^\// { print $1 }
' | sort -u | while read -r lib; do
  copy "$lib"
done
mkdir -p "$context/tmp" "$context/data"

cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY . /
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--protected-mode", "no", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no"]
DOCKERFILE
printf 'Dockerfile\n' >"$context/.dockerignore"

echo "build-redis-image: building $image from $server" >&2
docker build -q -t "$image" --label distlock.redis-image=1 "$context" >&2
echo "$image"
