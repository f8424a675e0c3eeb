#!/usr/bin/env bash
# Debian packages the test suite needs, installed if missing (used by `make test` and
# .ci/run): Node.js/npm for the JS SDK tests, redis-server for the Redis tests, haproxy
# for the cluster tests (a real load balancer in front of several nodes). Needs root (or
# passwordless sudo) only when something is missing.
set -euo pipefail

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
