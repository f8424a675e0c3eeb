"""Configuration: a TOML file, then TETHER_* environment overrides, validated once."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tether.config import DEFAULT_CONFIG_TOML, Config, NamespaceConfig, load_config
from tether.errors import ConfigError

WriteConfig = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "tether.toml"
        path.write_text(text)
        return path

    return write


def config_error(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


# -- defaults -----------------------------------------------------------------------------


def test_defaults_are_valid_and_add_the_default_namespace() -> None:
    loaded = load_config(env={})
    assert loaded.source == "defaults"
    assert loaded.config.port == 8000
    assert loaded.config.http_port == 9000
    assert loaded.config.namespaces == {"default": NamespaceConfig()}


def test_missing_secrets_are_generated_and_reported() -> None:
    loaded = load_config(env={})
    assert loaded.generated_token_secret
    assert loaded.generated_api_key
    assert len(loaded.config.token_secret) >= 32
    assert loaded.config.api_key


LONG_SECRET = "s3cret-" + "x" * 32


def test_a_token_secret_shorter_than_32_bytes_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"token_secret.*32 bytes"):
        load_config(env={"TETHER_TOKEN_SECRET": "short"})


def test_generated_secrets_differ_between_runs() -> None:
    assert load_config(env={}).config.token_secret != load_config(env={}).config.token_secret


def test_configured_secrets_are_not_generated(write_config: WriteConfig) -> None:
    path = write_config(f'token_secret = "{LONG_SECRET}"\napi_key = "k"\n')
    loaded = load_config(path, env={})
    assert (loaded.config.token_secret, loaded.config.api_key) == (LONG_SECRET, "k")
    assert not loaded.generated_secrets


def test_genconfig_output_parses_and_validates_as_the_defaults(write_config: WriteConfig) -> None:
    loaded = load_config(write_config(DEFAULT_CONFIG_TOML), env={})
    defaults = load_config(env={}).config
    secrets = {"token_secret": "", "api_key": ""}
    assert msgspec.structs.replace(loaded.config, **secrets) == msgspec.structs.replace(
        defaults, **secrets
    )


def test_genconfig_output_documents_every_option() -> None:
    documented = tomllib.loads(DEFAULT_CONFIG_TOML)
    assert set(documented) == set(Config.__struct_fields__)
    assert set(documented["namespaces"]["default"]) == set(NamespaceConfig.__struct_fields__)


# -- the file -----------------------------------------------------------------------------


def test_file_values_are_loaded(write_config: WriteConfig) -> None:
    path = write_config(
        "port = 8100\n[namespaces.chat]\nhistory_size = 10\nhistory_ttl = 60\nrecover = true\n"
    )
    loaded = load_config(path, env={})
    assert loaded.source == str(path)
    assert loaded.config.port == 8100
    assert loaded.config.namespaces["chat"].recover
    assert "default" in loaded.config.namespaces


def test_unknown_key_is_named(tmp_path: Path) -> None:
    assert "`prot`" in config_error("prot = 8000\n", tmp_path)


def test_unknown_namespace_key_is_named_with_its_namespace(tmp_path: Path) -> None:
    message = config_error("[namespaces.chat]\nhistroy_size = 10\n", tmp_path)
    assert "`histroy_size`" in message
    assert "namespaces.chat" in message


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path) -> None:
    message = config_error('port = "8000"\n', tmp_path)
    assert "`port`" in message
    assert "Expected `int`, got `str`" in message


def test_wrong_type_in_a_namespace_names_the_namespace(tmp_path: Path) -> None:
    text = "[namespaces.ok]\npresence = true\n[namespaces.chat]\npresence = 1\n"
    assert "namespaces.chat.presence" in config_error(text, tmp_path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_toml_is_reported_with_the_path(tmp_path: Path) -> None:
    message = config_error("port = = 1\n", tmp_path)
    assert "not valid TOML" in message
    assert "bad.toml" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port = 70000", "`port` must be a TCP port"),
        ("http_port = -1", "`http_port` must be a TCP port"),
        ("max_message_size = 0", "`max_message_size` must be greater than 0"),
        (
            "ping_interval = 5\npong_timeout = 5",
            "`pong_timeout` must be smaller than ping_interval",
        ),
        ('log_level = "loud"', "`log_level` must be one of"),
        ('log_format = "xml"', "`log_format` must be console or json"),
        ("ephemeral_window = -0.01", "`ephemeral_window` must be 0 (unlimited / immediate)"),
        ("ephemeral_window = 5", "`ephemeral_window` must be at most 1 second"),
    ],
)
def test_invalid_value_is_named_with_what_is_expected(
    text: str, expected: str, tmp_path: Path
) -> None:
    assert expected in config_error(text, tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[namespaces."bad name"]', "`namespaces.bad name` has an invalid name"),
        ("[namespaces.chat]\nhistory_size = 10", "`namespaces.chat` needs both history_size"),
        ("[namespaces.chat]\nhistory_ttl = 10", "`namespaces.chat` needs both history_size"),
        ("[namespaces.chat]\nhistory_size = -1", "`namespaces.chat.history_size` must be 0"),
        ("[namespaces.chat]\nhistory_ttl = -1", "`namespaces.chat.history_ttl` must be 0"),
        ("[namespaces.chat]\nrecover = true", "`namespaces.chat.recover` needs history"),
    ],
)
def test_invalid_namespace_is_named_with_what_is_expected(
    text: str, expected: str, tmp_path: Path
) -> None:
    assert expected in config_error(text, tmp_path)


# -- the environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "key", "expected"),
    [
        ("TETHER_PORT", "8100", "port", 8100),
        ("TETHER_HTTP_PORT", "9100", "http_port", 9100),
        ("TETHER_TOKEN_SECRET", LONG_SECRET, "token_secret", LONG_SECRET),
        ("TETHER_API_KEY", "env-key", "api_key", "env-key"),
        ("TETHER_ALLOW_ANONYMOUS", "true", "allow_anonymous", True),
    ],
)
def test_environment_overrides_a_key(var: str, value: str, key: str, expected: object) -> None:
    assert getattr(load_config(env={var: value}).config, key) == expected


def test_environment_wins_over_the_file(write_config: WriteConfig) -> None:
    path = write_config("port = 8100\nhttp_port = 9100\n")
    config = load_config(path, env={"TETHER_PORT": "8200"}).config
    assert (config.port, config.http_port) == (8200, 9100)


def test_environment_keeps_the_file_namespaces(write_config: WriteConfig) -> None:
    path = write_config("[namespaces.chat]\npresence = true\n")
    config = load_config(path, env={"TETHER_PORT": "8200"}).config
    assert config.namespaces["chat"].presence


def test_tether_config_names_the_file(write_config: WriteConfig) -> None:
    path = write_config("port = 8300\n")
    loaded = load_config(env={"TETHER_CONFIG": str(path)})
    assert loaded.source == str(path)
    assert loaded.config.port == 8300


def test_allowed_origins_from_the_environment_are_a_comma_list() -> None:
    config = load_config(env={"TETHER_ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    assert config.config.allowed_origins == ["https://a.example", "https://b.example"]


def test_environment_secrets_are_not_reported_as_generated() -> None:
    loaded = load_config(env={"TETHER_TOKEN_SECRET": LONG_SECRET, "TETHER_API_KEY": "k"})
    assert not loaded.generated_secrets


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("TETHER_PORT", "abc", "`port`"),
        ("TETHER_PORT", "70000", "`port` must be a TCP port"),
        ("TETHER_USE_UVLOOP", "maybe", "`use_uvloop`"),
    ],
)
def test_invalid_environment_value_is_named(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={var: value})
    assert expected in str(info.value)


# -- backend hooks, webhooks, push ---------------------------------------------------------

HOOKED = """
connect_proxy = "app"
rpc_proxy = "app"
allowed_origins = ["https://app.example"]
[proxies.app]
url = "http://127.0.0.1:5000/centrifugo"
timeout = 2.5
headers = ["Authorization"]
cookies = ["session"]
[namespaces.chat]
subscribe_proxy = "app"
publish_proxy = "app"
"""


def test_proxies_and_the_hooks_that_use_them_are_loaded(write_config: WriteConfig) -> None:
    config = load_config(write_config(HOOKED), env={}).config
    assert config.connect_proxy == "app"
    assert config.rpc_proxy == "app"
    assert config.refresh_proxy == ""
    proxy = config.proxies["app"]
    assert proxy.url == "http://127.0.0.1:5000/centrifugo"
    assert proxy.timeout == 2.5
    assert proxy.cookies == ["session"]
    assert config.namespaces["chat"].subscribe_proxy == "app"
    assert config.namespaces["chat"].publish_proxy == "app"


@pytest.mark.parametrize(
    "text",
    [
        'connect_proxy = "nope"\n[proxies.app]\nurl = "http://x"',
        'refresh_proxy = "nope"',
        'rpc_proxy = "nope"',
        'send_proxy = "nope"',
    ],
)
def test_an_unknown_proxy_name_is_a_config_error_naming_the_key(text: str, tmp_path: Path) -> None:
    key = text.split(" ", 1)[0]
    message = config_error(text, tmp_path)
    assert f"`{key}` names the proxy 'nope', which is not in [proxies]" in message


@pytest.mark.parametrize("key", ["subscribe_proxy", "publish_proxy", "sub_refresh_proxy"])
def test_an_unknown_proxy_name_in_a_namespace_names_the_namespace_key(
    key: str, tmp_path: Path
) -> None:
    message = config_error(
        f'[proxies.app]\nurl = "http://x"\n[namespaces.chat]\n{key} = "b"', tmp_path
    )
    assert f"`namespaces.chat.{key}` names the proxy 'b'" in message
    assert "(known: app)" in message


def test_forwarding_cookies_with_any_origin_allowed_is_refused_saying_why(
    tmp_path: Path,
) -> None:
    message = config_error('[proxies.app]\nurl = "http://x"\ncookies = ["session"]', tmp_path)
    assert "`proxies.app.cookies` forwards cookies while allowed_origins" in message
    assert "hijacking" in message


def test_forwarding_cookies_is_refused_when_the_environment_allows_any_origin(
    write_config: WriteConfig,
) -> None:
    with pytest.raises(ConfigError, match=r"proxies\.app\.cookies"):
        load_config(write_config(HOOKED), env={"TETHER_ALLOWED_ORIGINS": "*"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[proxies.app]\nurl = "ftp://x"', "`proxies.app.url` must be an http:// or https://"),
        ("[proxies.app]\ntimeout = 1", "`proxies.app.url` must be an http://"),
        ('[proxies.app]\nurl = "http://x"\ntimeout = 0', "`proxies.app.timeout` must be greater"),
        (
            '[proxies.app]\nurl = "http://x"\nmax_in_flight = 0',
            "`proxies.app.max_in_flight` must be greater",
        ),
        (
            '[proxies.app]\nurl = "http://x"\nheaders = ["Cookie"]',
            "`proxies.app.headers` cannot list Cookie",
        ),
        ('[proxies.app]\nurl = "http://x"\ntimeout = "1"', "at `proxies.app.timeout`"),
        ('[proxies.app]\nurl = "http://x"\nretries = 3', "unknown field `retries`"),
        ('[webhook]\nurl = "x"', "`webhook.url` must be an http://"),
        ('[webhook]\nevents = ["boom"]', "`webhook.events` has 'boom'"),
        ('[webhook]\nnamespaces = ["chat"]', "`webhook.namespaces` names 'chat'"),
        ("[webhook]\nmax_buffered = 0", "`webhook.max_buffered` must be greater than 0"),
        ("[push]\nbatch_size = 0", "`push.batch_size` must be greater than 0"),
        ("[namespaces.dm]\npush = true\npresence = true", "`namespaces.dm.push` needs [push] url"),
        (
            '[push]\nurl = "http://x"\n[namespaces.dm]\npush = true',
            "`namespaces.dm.push` needs presence = true",
        ),
    ],
)
def test_invalid_hook_settings_are_named_with_what_is_expected(
    text: str, expected: str, tmp_path: Path
) -> None:
    assert expected in config_error(text, tmp_path)


def test_webhook_and_push_are_off_by_default() -> None:
    config = load_config(env={}).config
    assert config.webhook.url == ""
    assert config.push.url == ""
    assert config.proxies == {}


def test_personal_channels_need_their_namespace_configured(tmp_path: Path) -> None:
    text = 'token_secret = "' + "s" * 40 + '"\nuser_personal_channel = true\n'
    text += 'user_personal_channel_namespace = "personal"\n'
    assert "user_personal_channel_namespace" in config_error(text, tmp_path)


def test_unknown_delta_type_is_refused_by_name(tmp_path: Path) -> None:
    text = 'token_secret = "' + "s" * 40 + '"\n[namespaces.doc]\nallowed_delta_types = ["zstd"]\n'
    assert "allowed_delta_types" in config_error(text, tmp_path)


def test_delta_is_refused_in_the_ephemeral_lane(tmp_path: Path) -> None:
    text = 'token_secret = "' + "s" * 40 + '"\n[namespaces.typing]\nlane = "ephemeral"\n'
    text += 'allowed_delta_types = ["fossil"]\n'
    assert "allowed_delta_types" in config_error(text, tmp_path)
