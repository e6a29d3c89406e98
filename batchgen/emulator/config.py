"""Emulator configuration: timing, limits, known models and fault rates.

Precedence, lowest first: the preset defaults (`embedded` or `serve`), `<state_dir>/config.json` when present, then
explicit overrides (`batchgen serve` flags, the `config` argument of the embedded emulator). All durations are in
emulated seconds: the clock runs `time_scale` emulated seconds per real second (0 freezes it for tests).
The upstream executor's API key is never part of the configuration: it is read from $BATCHGEN_UPSTREAM_API_KEY.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_FILE = "config.json"
MIB = 1024 * 1024

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini", "o4-mini",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-pro", "gpt-5.1", "gpt-5.2", "gpt-5.4", "gpt-5.4-mini",
    "gpt-5.4-nano", "gpt-5.5", "gpt-6-sol", "gpt-6-luna", "gpt-3.5-turbo",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
)


EXECUTORS = ("simulate", "upstream")
MAX_UPSTREAM_CONCURRENCY = 256


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour; every field is a key of `config.json`."""

    seed: int = 0
    time_scale: float = 1.0
    validation_seconds: float = 5.0
    line_seconds: float = 0.05
    finalizing_seconds: float = 10.0
    cancelling_seconds: float = 5.0
    completion_window_seconds: int = 86400
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    queued_token_limits: dict[str, int] = field(default_factory=dict)
    default_queued_token_limit: int | None = None
    max_lines: int = 50_000
    max_batch_bytes: int = 200 * MIB
    max_batch_upload_bytes: int = 200 * MIB
    max_upload_bytes: int = 512 * MIB
    default_examples: int = 5
    max_examples: int = 50
    error_rate: float = 0.0
    malformed_rate: float = 0.0
    expire_after_fraction: float | None = None
    stuck_finalizing_seconds: float = 0.0
    http_error_rate: float = 0.0
    http_retry_after: float = 1.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    control: bool = False
    executor: str = "simulate"
    upstream_url: str | None = None
    upstream_models: dict[str, str] = field(default_factory=dict)
    upstream_timeout: float = 600.0
    upstream_concurrency: int = 8

    @classmethod
    def preset(cls, name: str) -> EmulatorConfig:
        """`serve` (realistic pace) or `embedded` (a few hundred lines finish in about two seconds)."""
        if name == "serve":
            return cls()
        if name == "embedded":
            return cls(validation_seconds=0.2, line_seconds=0.004, finalizing_seconds=0.2,
                       cancelling_seconds=0.2, control=True)
        raise ConfigError(f"unknown preset {name!r}")

    @classmethod
    def load(cls, state_dir: str | Path | None, preset: str = "serve",
             overrides: Mapping[str, Any] | None = None) -> EmulatorConfig:
        """Preset defaults, then `<state_dir>/config.json`, then `overrides` (None values are ignored).

        With the upstream executor, lines are paced by the upstream server itself: `line_seconds` is 0 unless the
        file or the overrides set it."""
        config = cls.preset(preset)
        paced = False
        if state_dir is not None:
            path = Path(state_dir) / CONFIG_FILE
            if path.exists():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    raise ConfigError(f"{path}: not readable JSON ({error})") from error
                if not isinstance(data, dict):
                    raise ConfigError(f"{path}: expected a JSON object")
                config = config.updated(data)
                paced = "line_seconds" in data
        if overrides:
            given = {k: v for k, v in overrides.items() if v is not None}
            config = config.updated(given)
            paced = paced or "line_seconds" in given
        if config.executor == "upstream" and not paced:
            config = config.updated({"line_seconds": 0})
        return config

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `changes` applied; unknown keys and ill-typed values raise ConfigError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(f"unknown emulator config key {key!r}; known: {', '.join(sorted(known))}")
            values[key] = _coerce(key, value, values[key])
        result = EmulatorConfig(**values)
        result.check()
        return result

    def check(self) -> None:
        """Raise ConfigError for values out of range."""
        for name in ("error_rate", "malformed_rate", "http_error_rate", "drop_rate", "slow_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1")
        if self.expire_after_fraction is not None and not 0.0 <= self.expire_after_fraction <= 1.0:
            raise ConfigError("expire_after_fraction must be between 0 and 1")
        if self.time_scale < 0:
            raise ConfigError("time_scale must not be negative")
        for name in ("validation_seconds", "line_seconds", "finalizing_seconds", "cancelling_seconds",
                     "stuck_finalizing_seconds", "http_retry_after", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        self._check_upstream()

    def _check_upstream(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, not {self.executor!r}")
        if self.executor == "upstream" and not self.upstream_url:
            raise ConfigError("the upstream executor needs upstream_url (batchgen serve --upstream URL)")
        if self.upstream_url is not None:
            check_upstream_url(self.upstream_url)
        if not self.upstream_timeout > 0:
            raise ConfigError("upstream_timeout must be a positive number of seconds")
        if not 1 <= self.upstream_concurrency <= MAX_UPSTREAM_CONCURRENCY:
            raise ConfigError(f"upstream_concurrency must be between 1 and {MAX_UPSTREAM_CONCURRENCY}")
        for requested, upstream in self.upstream_models.items():
            if not requested or not upstream:
                raise ConfigError(f"upstream_models: empty model name in {requested!r} -> {upstream!r}")

    def queued_token_limit(self, model: str) -> int | None:
        """The queued prompt-token limit of a model (None: unlimited)."""
        return self.queued_token_limits.get(model, self.default_queued_token_limit)

    def is_known_model(self, model: str) -> bool:
        """A configured model, or a dated snapshot of one (`gpt-4o-mini-2024-07-18`); with the upstream executor
        every model, since the upstream server decides which models it serves."""
        if self.executor == "upstream":
            return True
        return model in self.models or _is_snapshot(model, self.models)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_snapshot(model: str, models: list[str]) -> bool:
    for known in models:
        suffix = model[len(known):]
        if model.startswith(known + "-") and len(suffix) == 11 and suffix[1:5].isdigit():
            return True
    return False


def check_upstream_url(url: str) -> None:
    """An http(s) URL with a host and without credentials, query or fragment (ConfigError otherwise)."""
    if "@" in url.partition("//")[2].partition("/")[0]:
        raise ConfigError("upstream_url must not hold credentials; put the key in $BATCHGEN_UPSTREAM_API_KEY")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a bad port or bracketed host
        valid = False
    if not valid:
        raise ConfigError(f"upstream_url must be an http:// or https:// URL such as http://localhost:11434/v1, "
                          f"not {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"upstream_url must not have a query or fragment: {url!r}")


def _coerce(key: str, value: Any, current: Any) -> Any:
    if key in ("expire_after_fraction", "default_queued_token_limit", "upstream_url") and value is None:
        return None
    try:
        if key in ("executor", "upstream_url"):
            if not isinstance(value, str):
                raise TypeError
            return value
        if key == "upstream_models":
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise TypeError
            return {str(k): v for k, v in value.items()}
        if isinstance(current, bool) or key == "control":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if key == "models":
            return [str(m) for m in value]
        if key == "queued_token_limits":
            return {str(k): int(v) for k, v in dict(value).items()}
        if key in ("seed", "completion_window_seconds", "max_lines", "max_batch_bytes", "max_batch_upload_bytes",
                   "max_upload_bytes", "default_examples", "max_examples", "default_queued_token_limit",
                   "upstream_concurrency"):
            return int(value)
        return float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"emulator config key {key!r}: bad value {value!r}") from error


_SERVE_KEYS = {"stuck_finalizing": "stuck_finalizing_seconds", "retry_after": "http_retry_after"}


def serve_overrides(options: Mapping[str, Any], models: str | None,
                    limits: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Config overrides from `batchgen serve` options (None: not given); MODEL=N limits, '*=N' for every model.

    `upstream` (a URL) selects the upstream executor; `upstream_model` holds REQUESTED=UPSTREAM model names.
    """
    options = dict(options)
    upstream, mapping = options.pop("upstream", None), options.pop("upstream_model", None) or ()
    out: dict[str, Any] = {_SERVE_KEYS.get(k, k): v for k, v in options.items() if v is not None}
    if out.get("control") is False:
        del out["control"]
    if upstream is not None:
        out.update(executor="upstream", upstream_url=upstream)
    if mapping:
        out["upstream_models"] = _model_mapping(mapping)
    if models:
        out["models"] = [m.strip() for m in models.split(",") if m.strip()]
    per_model: dict[str, int] = {}
    for item in limits:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--queued-token-limit expects MODEL=TOKENS, got {item!r}")
        if name.strip() == "*":
            out["default_queued_token_limit"] = int(value)
        else:
            per_model[name.strip()] = int(value)
    if per_model:
        out["queued_token_limits"] = per_model
    return out


def _model_mapping(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        requested, sep, upstream = item.partition("=")
        if not sep or not requested.strip() or not upstream.strip():
            raise ConfigError(f"--upstream-model expects REQUESTED=UPSTREAM (gpt-4o-mini=llama3.1:8b), got {item!r}")
        out[requested.strip()] = upstream.strip()
    return out
