"""Outbound calls to the app's backend: the hooks (connect, refresh, subscribe,
sub_refresh, publish, rpc, send) over HTTP with Centrifugo's proxy shapes, each behind its
own bulkhead, circuit breaker and retry budget; webhooks and offline push.
See docs/howto/backend-hooks.md."""

from tether.proxy.backend import HttpBackend
from tether.proxy.http import REASONS, Endpoint, Limits

__all__ = ["REASONS", "Endpoint", "HttpBackend", "Limits"]
