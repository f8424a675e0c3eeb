"""How ``redis_cluster`` is configured: what is refused, with which message, and what
``make_broker`` builds from it (the broker itself runs against a real cluster in
``tests/integration/test_redis_cluster_broker.py``)."""

from __future__ import annotations

import pytest

from tether.brokers.guarded import GuardedBroker
from tether.brokers.redis_cluster import RedisClusterBroker, RedisClusterPresenceStore
from tether.config import load_config
from tether.errors import ConfigError
from tether.server import make_broker


def _env(**values: str) -> dict[str, str]:
    return {"TETHER_BROKER": "redis", "TETHER_REDIS_CLUSTER": "true", **values}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TETHER_BROKER": "memory", "TETHER_REDIS_CLUSTER": "true"},
         '`redis_cluster` needs broker = "redis"'),
        (_env(TETHER_REDIS_URLS="redis://a:6379/0,redis://b:6379/0"),
         "`redis_cluster` cannot be combined with redis_urls"),
        (_env(TETHER_REDIS_URL="unix:///run/redis.sock"),
         "`redis_url` must be a redis:// or rediss:// URL of a cluster node"),
        (_env(TETHER_REDIS_URL="redis://a:6379/3"), "`redis_url` must use database 0"),
        (_env(TETHER_REDIS_URL="redis://a:port"), "`redis_url` has a port that is not a number"),
    ],
)  # fmt: skip
def test_invalid_redis_cluster_settings_are_named_with_what_is_wrong(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert expected in str(info.value)


def test_a_password_in_the_cluster_seed_url_never_shows_in_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=_env(TETHER_REDIS_URL="redis://user:hunter2@a:6379/2"))
    assert "hunter2" not in str(info.value)


async def test_redis_cluster_makes_a_guarded_cluster_broker_and_a_cluster_presence_store() -> None:
    config = load_config(env=_env(TETHER_REDIS_URL="redis://127.0.0.1:1")).config
    broker, presence = make_broker(config)
    try:
        assert isinstance(broker, GuardedBroker)
        assert isinstance(broker.inner, RedisClusterBroker)
        assert isinstance(presence, RedisClusterPresenceStore)
    finally:
        await broker.close()
        await presence.close()
