"""Emulator configuration: timing, limits, known models and fault rates.

Precedence, lowest first: the preset defaults (`embedded` or `serve`), `<state_dir>/config.json` when present, then
explicit overrides (`batchgen serve` flags, the `config` argument of the embedded emulator). All durations are in
emulated seconds: the clock runs `time_scale` emulated seconds per real second (0 freezes it for tests).
The upstream executor's API key is never part of the configuration: it is read from $BATCHGEN_UPSTREAM_API_KEY.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping
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
# how json_schema lines reach the upstream: probed at the first one, or as given (see emulator/upstream.py)
UPSTREAM_STRUCTURED = ("auto", "json_schema", "json_object_schema", "json_object", "none")
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
    malformed_when_prompt_contains: list[str] = field(default_factory=list)
    judge_low_rate: float = 0.1  # the share of examples a simulated judge scores low (see emulator/judging.py)
    prompt_caching: bool = True  # simulate: cached_tokens for prefixes seen before (see emulator/promptcache.py)
    prompt_cache_ttl_seconds: float = 300.0
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
    deployments: dict[str, str] = field(default_factory=dict)  # Azure deployment name -> model (empty: any name)
    upstream_structured: str = "auto"

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

        A problem in the file is one ConfigError line that names the file: where its JSON breaks (line and column),
        the unknown key, or the key, its value and what it allows. With the upstream executor, lines are paced by
        the upstream server itself: `line_seconds` is 0 unless the file or the overrides set it."""
        config = cls.preset(preset)
        path = Path(state_dir) / CONFIG_FILE if state_dir is not None else None
        from_file = read_config_file(path) if path is not None and path.exists() else {}
        try:
            config = config._applied(from_file)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        config = config._applied(given)
        try:
            config.check()
        except ConfigError as error:
            if "executor" in from_file and "executor" not in given:
                raise ConfigError(f"{path}: {error}") from error
            raise
        if config.executor == "upstream" and "line_seconds" not in from_file and "line_seconds" not in given:
            config = config.updated({"line_seconds": 0})
        return config

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `changes` applied; unknown keys and values a key does not allow raise ConfigError."""
        result = self._applied(changes)
        result.check()
        return result

    def _applied(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with each change checked against its key's rule (the checks across keys are `check`'s)."""
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            rule = _RULES.get(key)
            if rule is None:
                raise ConfigError(_unknown_key(key))
            values[key] = rule.apply(key, value)
        return EmulatorConfig(**values)

    def check(self) -> None:
        """Raise ConfigError for a combination of values that cannot work."""
        if self.executor == "upstream" and not self.upstream_url:
            raise ConfigError("the upstream executor needs upstream_url (batchgen serve --upstream URL)")

    def queued_token_limit(self, model: str) -> int | None:
        """The queued prompt-token limit of a model (None: unlimited)."""
        return self.queued_token_limits.get(model, self.default_queued_token_limit)

    def is_known_model(self, model: str) -> bool:
        """A configured model, or a dated snapshot of one (`gpt-4o-mini-2024-07-18`); with the upstream executor
        every model, since the upstream server decides which models it serves."""
        if self.executor == "upstream":
            return True
        return model in self.models or _is_snapshot(model, self.models)

    def deployment_model(self, name: str) -> str | None:
        """The model behind an Azure deployment name: the mapped one, or with no mapping the name itself (any name
        is a deployment then); None for a name the mapping does not hold."""
        if not self.deployments:
            return name
        return self.deployments.get(name)

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


def read_config_file(path: Path) -> dict[str, Any]:
    """The object in a `config.json`; ConfigError naming the file and, for broken JSON, the line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 (byte {error.start})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}") \
            from error
    except RecursionError as error:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys, not {_json_type(data)}")
    return data


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, list(_RULES), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(_RULES))}"
    return f"unknown emulator config key {key!r}; {hint}"


def _json_type(value: Any) -> str:
    """What a JSON value is, in words ("an array"), for a file that holds something else than an object."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _shown(value: Any) -> str:
    """A value as the error shows it: JSON's spelling for true, false and null, short."""
    text = json.dumps(value) if isinstance(value, bool) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Rule:
    """What one key allows: `allowed` says it in words for the error `KEY must be ALLOWED, not VALUE`, which is
    raised when `convert` (the value to store) raises TypeError or ValueError; a ConfigError of its own passes."""

    def __init__(self, allowed: str, convert: Callable[[Any], Any], nullable: bool = False) -> None:
        self.allowed = allowed + (", or null" if nullable else "")
        self.convert = convert
        self.nullable = nullable

    def apply(self, key: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        try:
            return self.convert(value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{key} must be {self.allowed}, not {_shown(value)}") from error


def _number(value: Any, low: float | None = None, high: float | None = None, above: float | None = None) -> float:
    """A finite JSON number within the bounds (a bool or a numeric string is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError
    if (low is not None and value < low) or (high is not None and value > high) \
            or (above is not None and not value > above):
        raise ValueError
    return float(value)


def _integer(value: Any, low: int | None = None, high: int | None = None) -> int:
    """A JSON integer within the bounds (5.0 counts as 5; 5.5, a bool or a string does not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError
    return value


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError
    return [_name(item) for item in value]


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError
    if not all(isinstance(item, str) and item for item in value):
        raise ValueError
    return list(value)


def _limits(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TypeError
    return {_name(model): _integer(limit, 0) for model, limit in value.items()}


def _renames(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError
    return {_name(requested): _name(upstream) for requested, upstream in value.items()}


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _executor(value: Any) -> str:
    if value not in EXECUTORS:
        raise ValueError
    return str(value)


def _structured(value: Any) -> str:
    if value not in UPSTREAM_STRUCTURED:
        raise ValueError
    return str(value)


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    check_upstream_url(value)
    return value


def _rate() -> _Rule:
    return _Rule("a number from 0 to 1", lambda v: _number(v, 0.0, 1.0))


def _seconds() -> _Rule:
    return _Rule("a number of seconds (0 or more)", lambda v: _number(v, 0.0))


def _count(what: str) -> _Rule:
    return _Rule(f"a whole number of {what} (1 or more)", lambda v: _integer(v, 1))


_RULES: dict[str, _Rule] = {
    "seed": _Rule("a whole number", _integer),
    "time_scale": _Rule("a number (0 or more)", lambda v: _number(v, 0.0)),
    "validation_seconds": _seconds(), "line_seconds": _seconds(), "finalizing_seconds": _seconds(),
    "cancelling_seconds": _seconds(), "stuck_finalizing_seconds": _seconds(), "http_retry_after": _seconds(),
    "slow_seconds": _seconds(),
    "completion_window_seconds": _count("seconds"),
    "models": _Rule("an array of model names", _names),
    "queued_token_limits": _Rule("an object of model names to token counts (whole numbers, 0 or more)", _limits),
    "default_queued_token_limit": _Rule("a whole number of tokens (0 or more)", lambda v: _integer(v, 0),
                                        nullable=True),
    "max_lines": _count("lines"), "max_batch_bytes": _count("bytes"), "max_batch_upload_bytes": _count("bytes"),
    "max_upload_bytes": _count("bytes"), "default_examples": _count("examples"), "max_examples": _count("examples"),
    "error_rate": _rate(), "malformed_rate": _rate(), "http_error_rate": _rate(), "drop_rate": _rate(),
    "slow_rate": _rate(), "judge_low_rate": _rate(),
    "malformed_when_prompt_contains": _Rule("an array of texts (none empty)", _texts),
    "expire_after_fraction": _Rule("a number from 0 to 1", lambda v: _number(v, 0.0, 1.0), nullable=True),
    "control": _Rule("true or false", _flag), "prompt_caching": _Rule("true or false", _flag),
    "prompt_cache_ttl_seconds": _seconds(),
    "executor": _Rule(f"one of {', '.join(EXECUTORS)}", _executor),
    "upstream_url": _Rule("an http:// or https:// URL", _url, nullable=True),
    "upstream_models": _Rule("an object of requested model names to upstream model names", _renames),
    "deployments": _Rule("an object of Azure deployment names to model names", _renames),
    "upstream_timeout": _Rule("a positive number of seconds", lambda v: _number(v, above=0.0)),
    "upstream_concurrency": _Rule(f"between 1 and {MAX_UPSTREAM_CONCURRENCY}",
                                  lambda v: _integer(v, 1, MAX_UPSTREAM_CONCURRENCY)),
    "upstream_structured": _Rule(f"one of {', '.join(UPSTREAM_STRUCTURED)}", _structured),
}

_SERVE_KEYS = {"stuck_finalizing": "stuck_finalizing_seconds", "retry_after": "http_retry_after"}


def serve_overrides(options: Mapping[str, Any], models: str | None,
                    limits: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Config overrides from `batchgen serve` options (None: not given); MODEL=N limits, '*=N' for every model.

    `upstream` (a URL) selects the upstream executor; `upstream_model` holds REQUESTED=UPSTREAM model names and
    `deployment` NAME=MODEL Azure deployments.
    """
    options = dict(options)
    upstream, mapping = options.pop("upstream", None), options.pop("upstream_model", None) or ()
    deployments = options.pop("deployment", None) or ()
    out: dict[str, Any] = {_SERVE_KEYS.get(k, k): v for k, v in options.items() if v is not None}
    if out.get("control") is False:
        del out["control"]
    if upstream is not None:
        out.update(executor="upstream", upstream_url=upstream)
    if mapping:
        out["upstream_models"] = _model_mapping(mapping)
    if deployments:
        out["deployments"] = _model_mapping(deployments, "--deployment expects NAME=MODEL (batch-4o=gpt-4o)")
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


def _model_mapping(items: tuple[str, ...] | list[str],
                   expects: str = "--upstream-model expects REQUESTED=UPSTREAM (gpt-4o-mini=llama3.1:8b)") \
        -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        requested, sep, upstream = item.partition("=")
        if not sep or not requested.strip() or not upstream.strip():
            raise ConfigError(f"{expects}, got {item!r}")
        out[requested.strip()] = upstream.strip()
    return out
