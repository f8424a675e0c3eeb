"""The ``tether`` command line: token, check-config, genconfig."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.auth import verify_connection_token, verify_subscription_token
from tether.cli import app
from tether.config import DEFAULT_CONFIG_TOML

SECRET = "cli-secret-" + "x" * 32


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own TETHER_* settings must not leak into these tests.
    for var in [v for v in os.environ if v.startswith("TETHER_")]:
        monkeypatch.delenv(var)


def test_token_prints_only_a_token_that_verifies(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["token", "--user", "alice", "--ttl", "60"], env={"TETHER_TOKEN_SECRET": SECRET}
    )
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    claims = verify_connection_token(line, SECRET)
    assert claims.user == "alice"
    assert claims.expire_at is not None


def test_token_without_ttl_does_not_expire(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "--user", "bob"], env={"TETHER_TOKEN_SECRET": SECRET})
    assert verify_connection_token(result.stdout.strip(), SECRET).expire_at is None


def test_token_with_channels_prints_one_subscription_token_per_channel(
    runner: CliRunner,
) -> None:
    result = runner.invoke(
        app,
        ["token", "--user", "alice", "--channel", "private:a", "--channel", "private:b"],
        env={"TETHER_TOKEN_SECRET": SECRET},
    )
    lines = result.stdout.splitlines()
    channels = [verify_subscription_token(line, SECRET).channel for line in lines]
    assert channels == ["private:a", "private:b"]


def test_token_uses_the_secret_of_the_config_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(f'token_secret = "{SECRET}"\n')
    result = runner.invoke(app, ["token", "--user", "alice", "--config", str(path)])
    assert verify_connection_token(result.stdout.strip(), SECRET).user == "alice"


def test_token_without_a_configured_secret_fails_with_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["token", "--user", "alice"], env={})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "no token_secret configured" in result.stderr


def test_check_config_accepts_a_valid_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text("[namespaces.chat]\npresence = true\n")
    result = runner.invoke(app, ["check-config", "--config", str(path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ok: {path} (namespaces: chat, default)"


def test_check_config_exits_2_naming_the_bad_key(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text("prot = 8000\n")
    result = runner.invoke(app, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "error: invalid config" in result.stderr
    assert "`prot`" in result.stderr


def test_check_config_exits_2_for_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["check-config", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_check_config_reads_tether_config(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text("port = 70000\n")
    result = runner.invoke(app, ["check-config"], env={"TETHER_CONFIG": str(path)})
    assert result.exit_code == 2
    assert "`port`" in result.stderr


def test_genconfig_prints_the_reference_configuration(runner: CliRunner) -> None:
    result = runner.invoke(app, ["genconfig"])
    assert result.exit_code == 0
    assert result.stdout == DEFAULT_CONFIG_TOML
    assert tomllib.loads(result.stdout)["port"] == 8000


def test_genconfig_output_passes_check_config(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text(runner.invoke(app, ["genconfig"]).stdout)
    assert runner.invoke(app, ["check-config", "--config", str(path)]).exit_code == 0
