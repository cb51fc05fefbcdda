"""Typed settings, validated once: env vars with the ``VIGIL_`` prefix, an optional TOML or YAML file,
then CLI flags on top (the CLI passes them as keyword overrides)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

CONFIG_FILE_ENV = "VIGIL_CONFIG"
DEFAULT_PACK_FRAMES = 16  # frames per stream entry from a file producer
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "fashion-mnist"


class Settings(BaseSettings):
    """Everything a producer, worker or the CLI needs to agree on."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="forbid", validate_default=True)

    redis_url: str | None = Field(
        default=None,
        description="Broker URL (redis://, rediss://, unix://). Unset: a `vigil broker` on its default port, else "
                    "the embedded server (read-only commands exit 5 instead).",
    )
    namespace: str = Field(default="vigil", pattern=r"^[A-Za-z0-9_.-]+$", description="Key prefix.")
    bundle: Path = Field(default=DEFAULT_BUNDLE, description="Model bundle directory.")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_json: bool = False

    # Workers
    workers: int = Field(default=max(1, os.cpu_count() or 1), ge=1, le=256)
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    runtime: Literal["litert", "savedmodel"] = Field(
        default="litert", description="Worker inference: litert (the INT8 model on CPU, no TensorFlow) or savedmodel "
                                      "(the bundle's float SavedModel through TensorFlow: GPU workers).")
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_wait_ms: int = Field(default=20, ge=0, le=10_000)
    per_source_cap: int = Field(default=32, ge=1, le=1024)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=3, ge=1, le=100)
    block_ms: int = Field(default=1_000, ge=1, le=2_000, description="XREADGROUP BLOCK; below the socket timeout.")

    # Producers
    high_water: int = Field(default=2_000, ge=1, description="Pause a file producer above this group lag.")
    pack_frames: int = Field(default=DEFAULT_PACK_FRAMES, ge=1, le=1024,
                             description="Frames per stream entry from a file producer (1: one entry per frame).")
    decoders: int = Field(default=0, ge=0, le=64,
                          description="Decoder threads of a file producer: 0 = auto (cores + 1, at most 4; "
                                      "GOP-parallel, see docs/pipeline.md); 1: one FFmpeg-threaded decoder.")
    live_maxlen: int = Field(default=8, ge=1, description="Stream cap for live sources (undelivered frames).")
    broker_patience_s: float = Field(default=60.0, ge=0,
                                     description="How long a file producer waits out an unreachable broker (a "
                                                 "restart, a failover) before it fails; it resumes when run again.")

    # Live sources (cameras)
    max_age_ms: int = Field(default=500, ge=1, description="Workers skip live frames older than this (stale).")
    results_maxlen: int = Field(default=100_000, ge=1, description="Approximate cap of a live source's results.")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay of a camera.")
    reconnect_max_s: float = Field(default=10.0, gt=0, description="Cap of the exponential reconnect delay.")
    stall_timeout_s: float = Field(default=5.0, gt=0, description="No frame for this long: reconnect the camera.")

    # Observability
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Serve Prometheus metrics here.")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from env, an optional file (``--config`` or ``VIGIL_CONFIG``) and CLI overrides."""
    path = config_file or (Path(os.environ[CONFIG_FILE_ENV]) if os.environ.get(CONFIG_FILE_ENV) else None)
    file_values = _read_config_file(path) if path else {}
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}. Check VIGIL_* env vars, the config file and flags.") from exc


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist. Pass an existing file or unset {CONFIG_FILE_ENV}.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc}). Pass a readable UTF-8 text file.") from exc
    if path.suffix == ".toml":
        data: Any = _parse_toml(path, text)
    elif path.suffix in (".yaml", ".yml"):
        data = _parse_yaml(path, text)
    else:
        raise ConfigError(f"config file {path}: unsupported type {path.suffix!r}; use .toml or .yaml.")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, got {type(data).__name__}.")
    return data.get("vigil", data)


FIX_SYNTAX = "Fix the syntax there (unclosed brackets or quotes, a missing value, indentation) and retry."
# tomllib (3.11-3.13) puts the position only in the message: "Invalid value (at line 1, column 11)".
TOML_AT = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$")


def _parse_toml(path: Path, text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = TOML_AT.match(str(exc))
        if match is None:
            where, msg = "", str(exc)
        elif match["line"]:
            where, msg = f" at line {match['line']}, column {match['col']}", match["msg"]
        else:
            where, msg = f" at line {max(1, len(text.splitlines()))} (end of file)", match["msg"]
        raise ConfigError(f"config file {path} is not valid TOML{where}: {msg}. {FIX_SYNTAX}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        where = f" at {_yaml_mark(exc.problem_mark)}" if exc.problem_mark else ""
        what = exc.problem or "syntax error"
        if exc.context and exc.context_mark:  # e.g. "while parsing a flow sequence", where the "[" was opened
            what += f" ({exc.context} at {_yaml_mark(exc.context_mark)})"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {what}. {FIX_SYNTAX}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}. {FIX_SYNTAX}") from None


def _yaml_mark(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"
