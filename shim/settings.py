"""Settings: environment (`SHIM_*`, nested with `__`) > TOML file > built-in defaults.

The TOML file is `--config`, else `SHIM_CONFIG`, else `config/shim.toml`. Spawned workers
re-import the app and see only the environment, so the CLI exports what it was given.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shim.errors import ConfigError
from shim.types import Backend

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path("config/shim.toml")
MiB = 1024 * 1024


class EtcdSettings(BaseModel):
    """Where the fleet's flag store is (`SHIM_FLAG_STORE=etcd`; TOML table `[etcd]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: str = "http://127.0.0.1:2379"  # comma-separated http(s)://host:port
    prefix: str = "/cutover-shim/"  # two deployments on one etcd use two prefixes
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError("must be comma-separated http:// or https:// URLs")
        return ",".join(urls)

    @field_validator("prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/" (e.g. "/cutover-shim/")')
        return value if value.endswith("/") else value + "/"


class Settings(BaseSettings):
    """Everything an operator can set. Field `x` is env `SHIM_X` and TOML key `x`."""

    model_config = SettingsConfigDict(
        env_prefix="SHIM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    rust_url: str = "http://127.0.0.1:3100"
    go_url: str = "http://127.0.0.1:4110"
    host: str = "127.0.0.1"
    port: int = Field(4120, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(4121, ge=0, le=65535)
    state_dir: Path = Path("state")
    flag_store: Literal["file", "etcd"] = "file"
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    admin_token: SecretStr | None = None
    pin: dict[str, Backend] = Field(default_factory=dict)
    routes_file: Path = Path("config/routes.toml")
    max_json_bytes: int = Field(16 * MiB, ge=1024)
    parity_gate: bool = True
    connect_timeout: float = Field(2.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_connections_per_backend: int = Field(256, ge=1)  # ceiling of the adaptive limit
    # Admission (shim/serving/admission.py), per backend per worker: past the in-flight
    # limit a request waits up to queue_timeout (a route may override) among at most
    # queue_limit waiters.
    queue_timeout: float = Field(2.0, gt=0)
    queue_limit: int = Field(4096, ge=1)
    admission_floor: int = Field(16, ge=1)  # the adaptive limit's lowest value
    admission_tolerance: float = Field(2.0, ge=1)  # latency over baseline before it shrinks
    # Below the backends' own keep-alive (uvicorn's default is 5 s, Go's net/http none,
    # nginx 75 s), so the shim closes an idle connection before the backend can.
    upstream_idle_seconds: float = Field(4.0, gt=0, le=300)
    flag_poll_seconds: float = Field(0.2, gt=0, le=1.0)
    flip_wait_seconds: float = Field(2.0, ge=0, le=30)
    metrics_dir: Path | None = (
        None  # default: a runtime dir per port; PROMETHEUS_MULTIPROC_DIR wins
    )
    backend_health_path: str = "/health"
    shadow_max_inflight: int = Field(64, ge=1)  # per worker; past it shadows are skipped
    shadow_timeout: float = Field(5.0, gt=0)
    shadow_max_body_bytes: int = Field(4 * MiB, ge=1024)  # request or answer; larger: skipped
    # Share of a worker's time that translating and comparing shadows may take; past it
    # shadows are skipped ("budget"), so clients never queue behind comparisons.
    shadow_cpu_share: float = Field(0.01, gt=0, le=1)
    parity_window_hours: float = Field(24.0, gt=0)
    parity_gate_max_age_hours: float = Field(1.0, gt=0)  # newest sample older: evidence stale
    canary_key_header: str = "x-shim-key"
    # Retries may add up to this share of load on the fallback side: above 0.5, so a backend
    # failing every other request is ridden out until the guard rolls it back.
    fallback_budget_ratio: float = Field(0.6, ge=0, le=1)
    fallback_budget_burst: float = Field(20.0, ge=1)
    guard_interval_seconds: float = Field(0.5, gt=0)
    header_timeout: float = Field(10.0, gt=0)  # a request's headers must arrive within this
    body_timeout: float = Field(60.0, gt=0)  # ... and its body within this
    max_header_bytes: int = Field(64 * 1024, ge=4096)
    total_timeout: float | None = Field(None, gt=0)  # whole exchange; a route may override
    limit_concurrency: int = Field(8192, ge=16)  # requests under way per worker; past it, 503
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True

    @field_validator("rust_url", "go_url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http:// or https:// base URL without query")
        return value.rstrip("/")

    @field_validator("pin")
    @classmethod
    def _lowercase_endpoints(cls, value: dict[str, Backend]) -> dict[str, Backend]:
        return {endpoint.lower(): backend for endpoint, backend in value.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence, highest first: explicit arguments, environment, the TOML file."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def backend_url(self, backend: Backend) -> str:
        return self.rust_url if backend == "rust" else self.go_url

    def resolved_metrics_dir(self) -> Path:
        """Where workers keep multiprocess metric files (wiped when `shim serve` starts)."""
        explicit = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if explicit:
            return Path(explicit)
        if self.metrics_dir:
            return self.metrics_dir
        # Runtime files, not state: never under state_dir, where a tool that truncates the
        # memory-mapped files kills every worker with SIGBUS. systemd's RuntimeDirectory=
        # (a colon-separated list), else the user's runtime dir, else the temp dir.
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        base = runtime or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(base) / f"cutover-shim-{self.port}-metrics"

    def resolved_routes_file(self) -> Path:
        """The route table path; a relative one is tried in the working directory, then in
        the project checkout, so `shim` works from anywhere in a development install."""
        return _existing(self.routes_file)


def _existing(path: Path) -> Path:
    if path.is_absolute() or path.exists():
        return path
    fallback = PROJECT_ROOT / path
    return fallback if fallback.exists() else path


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The TOML file to read: explicit, else SHIM_CONFIG, else the default if it exists."""
    chosen = explicit or os.environ.get("SHIM_CONFIG")
    if chosen:
        path = Path(chosen)
        key = "--config" if explicit else "SHIM_CONFIG"
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; name the TOML file itself", key=key)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", key=key)
        return path.resolve()
    default = _existing(DEFAULT_CONFIG)
    return default.resolve() if default.is_file() else None


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: object) -> Settings:
    """Build Settings from the environment, the TOML file and `overrides` (CLI flags).

    Raises ConfigError naming the first bad key and where its value came from (the command
    line, the environment variable, or the file and line), so the CLI prints one line.
    """
    path = config_path(config)
    # Any: each command-line value is checked by the model, as the environment's are.
    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return _FromFile(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "settings"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], Settings.model_fields, n=1)
            message = "unknown setting" + (f", did you mean {close[0]!r}?" if close else "")
        origin = _origin(loc, given, path)
        raise ConfigError(f"{message} ({origin})" if origin else message, key=key) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML (names the line)
        raise ConfigError(str(exc), key=str(path)) from None


def _origin(loc: tuple[str, ...], given: dict[str, object], path: Path | None) -> str:
    """Where the offending value came from, in precedence order: the command line, the
    environment, the TOML file (with the line of the key, where it can be found)."""
    if not loc:
        return ""
    if loc[0] in given:
        return f"command line --{loc[0].replace('_', '-')}"
    environment = {name.upper() for name in os.environ}  # env names are case-insensitive
    for depth in range(len(loc), 0, -1):
        name = "SHIM_" + "__".join(loc[:depth]).upper()
        if name in environment:
            return f"env {name}"
    if path is not None:
        line = toml_key_line(path.read_text(errors="replace"), loc)
        return f"in {path}, line {line}" if line else f"in {path}"
    return ""


_TABLE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def toml_key_line(text: str, loc: tuple[str, ...]) -> int | None:
    """The 1-based line where the key `loc` (e.g. ("pin", "embed")) is set in TOML `text`,
    as a `key = ...` line, a dotted key, or a `[table]` header; None when not found."""

    def parts(dotted: str) -> tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in dotted.split("."))

    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            table = parts(header.group(1))
            if table == loc:
                return number
            continue
        key = _KEY.match(line)
        if key and (table + parts(key.group(1)))[: len(loc)] == loc:
            return number
    return None
