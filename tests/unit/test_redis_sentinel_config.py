"""How ``redis_sentinels`` and ``redis_sentinel_master`` are configured: what is refused,
with which message, and what ``make_broker`` builds from them (the broker follows a real
Sentinel failover in ``tests/integration/test_redis_sentinel.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.brokers.guarded import GuardedBroker
from tether.brokers.redis import RedisBroker, RedisPresenceStore
from tether.config import load_config, sentinel_address
from tether.errors import ConfigError
from tether.server import make_broker


def _env(**values: str) -> dict[str, str]:
    return {
        "TETHER_BROKER": "redis",
        "TETHER_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26379",
        "TETHER_REDIS_SENTINEL_MASTER": "tether",
        **values,
    }


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (_env(TETHER_BROKER="memory"), '`redis_sentinels` needs broker = "redis"'),
        ({"TETHER_BROKER": "redis", "TETHER_REDIS_SENTINEL_MASTER": "tether"},
         "`redis_sentinels` must list the Sentinels (host:port)"),
        (_env(TETHER_REDIS_SENTINEL_MASTER=""), "`redis_sentinel_master` must name the master"),
        (_env(TETHER_REDIS_SENTINELS="10.0.0.1"), "`redis_sentinels[0]` must be host:port"),
        (_env(TETHER_REDIS_SENTINELS="a:26379,b:sentinel"),
         "`redis_sentinels[1]` has a port that is not a number from 1 to 65535"),
        (_env(TETHER_REDIS_SENTINELS="a:0"), "`redis_sentinels[0]` has a port"),
        (_env(TETHER_REDIS_URLS="redis://a:6379/0,redis://b:6379/0"),
         "`redis_sentinels` cannot be combined with redis_urls or redis_cluster"),
        (_env(TETHER_REDIS_CLUSTER="true"),
         "`redis_sentinels` cannot be combined with redis_urls or redis_cluster"),
        (_env(TETHER_REDIS_URL="unix:///run/redis.sock"),
         "`redis_url` must be a redis:// or rediss:// URL with redis_sentinels"),
    ],
)  # fmt: skip
def test_invalid_sentinel_settings_are_named_with_what_is_wrong(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert expected in str(info.value)


def test_sentinels_are_read_from_the_environment_comma_separated() -> None:
    config = load_config(env=_env()).config
    assert config.redis_sentinels == ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
    assert config.redis_sentinel_master == "tether"


@pytest.mark.parametrize(
    ("address", "parsed"),
    [("sentinel-0.internal:26379", ("sentinel-0.internal", 26379)), ("[::1]:5000", ("::1", 5000))],
)
def test_a_sentinel_address_is_host_and_port(address: str, parsed: tuple[str, int]) -> None:
    assert sentinel_address(address) == parsed


async def test_sentinels_make_a_guarded_redis_broker_and_presence_store_that_ask_them() -> None:
    broker, presence = make_broker(load_config(env=_env()).config)
    try:
        assert isinstance(broker, GuardedBroker)
        assert isinstance(broker.inner, RedisBroker)
        assert broker.inner.sentinels is not None
        assert broker.inner.sentinels.master == "tether"
        assert list(broker.inner.sentinels.addresses) == [
            ("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)
        ]  # fmt: skip
        assert isinstance(presence, RedisPresenceStore)
    finally:
        await broker.close()
        await presence.close()


@pytest.mark.parametrize(
    ("env", "namespace", "expected"),
    [
        ({}, "wait_replicas = -1", "`namespaces.chat.wait_replicas` must be 0 (do not wait)"),
        ({"TETHER_BROKER": "memory"}, "wait_replicas = 1",
         '`namespaces.chat.wait_replicas` needs broker = "redis" without redis_cluster'),
        ({"TETHER_REDIS_CLUSTER": "true", "TETHER_REDIS_URL": "redis://a:6379"},
         "wait_replicas = 1", "`namespaces.chat.wait_replicas` needs broker"),
        ({}, "wait_timeout = 2", "`namespaces.chat.wait_timeout` must be above 0 and below 2"),
    ],
)  # fmt: skip
def test_invalid_wait_settings_are_named_with_what_is_wrong(
    tmp_path: Path, env: dict[str, str], namespace: str, expected: str
) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(f"[namespaces.chat]\n{namespace}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"TETHER_BROKER": "redis", **env})
    assert expected in str(info.value)


def test_a_namespace_may_wait_for_replicas_on_one_redis(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text("[namespaces.chat]\nwait_replicas = 1\nwait_timeout = 0.25\n")
    chat = load_config(path, env={"TETHER_BROKER": "redis"}).config.namespaces["chat"]
    assert (chat.wait_replicas, chat.wait_timeout) == (1, 0.25)
