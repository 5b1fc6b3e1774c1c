"""Settings precedence: CLI > environment > TOML file > defaults, one test per pair."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shim.errors import ConfigError
from shim.settings import load_settings
from tests.servers import ROOT, SHIM, base_env


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SHIM_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shim.toml"
    path.write_text(text)
    return path


def test_precedence_toml_over_default(tmp_path: Path) -> None:
    assert load_settings(toml(tmp_path, "port = 5000\n")).port == 5000
    assert load_settings(toml(tmp_path, "")).port == 4120


def test_precedence_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_PORT", "6000")
    assert load_settings(toml(tmp_path, "port = 5000\n")).port == 6000


def test_precedence_cli_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_PORT", "6000")
    assert load_settings(toml(tmp_path, "port = 5000\n"), port=7000).port == 7000


def test_config_file_comes_from_shim_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIM_CONFIG", str(toml(tmp_path, 'go_url = "http://10.0.0.1:9/"\n')))
    assert load_settings().go_url == "http://10.0.0.1:9"


def test_pins_come_from_nested_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHIM_PIN__EMBED", "rust")
    assert load_settings(toml(tmp_path, "")).pin == {"embed": "rust"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port = 'x'\n", "port"),
        ("bogus = 1\n", "bogus"),
        ("rust_url = 'ftp://x'\n", "rust_url"),
        ("[pin]\nembed = 'python'\n", "pin.embed"),
    ],
)
def test_bad_setting_is_one_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(toml(tmp_path, text))
    assert caught.value.key == key


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "key", "line", "says"),
    [
        ('port = "abc"\n', "port", 1, "valid integer"),
        ("workers = 2\nprot = 4120\n", "prot", 2, "did you mean 'port'"),
        ("# pins\n[pin]\nembed = 'python'\n", "pin.embed", 3, "'rust' or 'go'"),
        ("pin.embed = 'python'\n", "pin.embed", 1, "'rust' or 'go'"),
    ],
)
def test_a_mistake_in_the_config_file_names_the_file_and_line(
    tmp_path: Path, text: str, key: str, line: int, says: str
) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == key
    assert f"in {path}, line {line}" in caught.value.message and says in caught.value.message
    assert "env" not in caught.value.message


def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIM_PORT", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings(toml(tmp_path, "port = 5000\n"))
    assert "(env SHIM_PORT)" in caught.value.message and "shim.toml" not in caught.value.message


def test_a_bad_value_from_the_command_line_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(toml(tmp_path, ""), workers=0)
    assert "(command line --workers)" in caught.value.message


def test_a_directory_given_as_config_is_reported_as_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert "is a directory" in caught.value.message and caught.value.key == "--config"


def test_shim_check_prints_one_line_naming_the_config_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'host = "127.0.0.1"\nport = "abc"\n')
    result = subprocess.run(
        [*SHIM, "check", "--config", str(path)],
        env=base_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"in {path}, line 2" in result.stderr


def test_shim_check_prints_pins_as_settings_not_a_dict(tmp_path: Path) -> None:
    path = toml(tmp_path, "[pin]\nembed = 'go'\nsql = 'rust'\n")
    result = subprocess.run(
        [*SHIM, "check", "--config", str(path)],
        env=base_env(SHIM_STATE_DIR=str(tmp_path / "state")),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "pins embed=go, sql=rust" in result.stdout and "{" not in result.stdout
