"""Settings precedence: CLI > environment > TOML file > defaults, one test per pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.errors import ConfigError
from shim.settings import load_settings


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
