"""A Redis shard's address: its name on the hash ring of the sharded broker.

Shared by the config (which validates ``redis_urls`` and refuses two URLs naming one
shard) and :mod:`tether.brokers.sharded` (which places shards on the ring by it), so the
config needs no broker implementation. Pure: no I/O.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

__all__ = ["shard_address"]


def shard_address(url: str) -> str:
    """The shard's name on the ring: ``host:port/db`` of a ``redis://`` or ``rediss://``
    URL (port 6379 and db 0 by default), ``unix:PATH/db`` of a ``unix://`` URL.

    Credentials, TLS and other options are left out, so rotating a password or turning on
    TLS moves no channel. Raises :class:`ValueError` for a URL that names no server."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
        where = f"{parts.hostname.lower()}:{port}"
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("has no socket path")
        db = query.get("db", ["0"])[0]
        where = f"unix:{parts.path}"
    else:
        raise ValueError("is not a redis://, rediss:// or unix:// URL")
    if not db.isdigit():
        raise ValueError(f"has a database {db!r} that is not a number")
    return f"{where}/{int(db)}"
