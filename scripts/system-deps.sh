#!/usr/bin/env bash
# Debian packages the test suite needs, installed if missing (used by `make test` and
# .ci/run): Node.js/npm for the JS SDK tests, redis-server for the Redis tests (the
# Sentinel tests run `redis-server --sentinel`, so Debian's redis-sentinel is not needed), haproxy
# for the cluster tests (a real load balancer in front of several nodes), prometheus for
# promtool (alert-rule checks and tests) and the Prometheus server (the alert integration
# test), chromium for the browser tests (Playwright drives this system browser; it never
# downloads one). Needs root (or passwordless sudo) only when something is missing.
set -euo pipefail

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
