"""Prices per model (standard, batch, cached input; USD per 1M tokens) and the exact cost of a usage.

Where a price comes from, first match wins:

1. a user price file: the file named by `BATCHGEN_PRICES`, or else `prices.toml` in the job directory (as the
   job read it: the ledger keeps a job's price file, so its results are priced alike once the directory is gone);
2. the project's table `batchgen/data/prices.toml` (gaps and corrections of genai-prices, e.g. embeddings at
   batch price, which genai-prices prices at the standard rate);
3. genai-prices, asked with the current date (it models batch prices only from 2026-10-14). Where its batch
   variant names no cached-input rate (the Batch tab shows "-" for gpt-4o, gpt-4.1, o3, o4-mini), cached input
   is priced at the batch input rate, as in a price file without `batch_cached_input`.

An unknown model is a PricingError that says how to add a price; it is never priced at $0, except on a backend the
job marks free (`free = true`: a local model) or one whose base URL is a loopback address (localhost, 127.0.0.0/8,
::1: `batchgen serve --upstream`, a local vLLM or llama.cpp server), where a model no user price file names costs
nothing. The embedded emulator is not such a backend: it is a dry run of the real job, priced as the real model.
Every price carries its source. Money is `Decimal`, never float: a cost is tokens * price / 1,000,000, exact.

Price file format (TOML; prices are strings or numbers, USD per 1M tokens)::

    [models."my-model"]
    input = "0.15"            # standard input (required)
    output = "0.60"           # standard output (required)
    cached_input = "0.075"    # default: input
    batch_input = "0.075"     # default: input / 2 (the Batch API bills 50 % of standard)
    batch_output = "0.30"     # default: output / 2
    batch_cached_input = ...  # default: batch_input (a model whose Batch tab shows no cached rate)
    source = "where these numbers come from"
    [models."my-model".long_context]       # optional: a request with more prompt tokens than `above`
    above = 272000                          # pays these rates for all of its tokens
    input = "5"                             # and cached_input, output, batch_input, batch_cached_input,
    batch_output = "11.25"                  # batch_output as above

Reasoning tokens are part of `completion_tokens` in the API's usage and are billed as output; `request_cost`
takes them for the record but does not add them a second time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchgen._version import __version__
from batchgen.errors import PricingError as PricingError  # re-exported: the emulator may import only this module

ENV_VAR = "BATCHGEN_PRICES"
FREE_SOURCE = "free: the job's backend serves this model at no cost (free = true)"
LOCAL_SOURCE = "free (local server): a loopback backend serves this model at no cost"
USER_FILE = "prices.toml"
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens for one way of processing (standard or batch)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal


@dataclass(frozen=True)
class ModelPrice:
    """Prices of one model with their source; the long-context rates apply per request above the threshold."""

    model: str
    standard: Rates
    batch: Rates
    source: str
    long_context_above: int | None = None
    long_standard: Rates | None = None
    long_batch: Rates | None = None

    def rates(self, prompt_tokens: int, batch: bool = True) -> Rates:
        """The rates one request pays, given its prompt tokens (long-context tier per request)."""
        if self.long_context_above is not None and prompt_tokens > self.long_context_above:
            long = self.long_batch if batch else self.long_standard
            if long is not None:
                return long
        return self.batch if batch else self.standard

    def cost(
        self, prompt_tokens: int, cached_tokens: int, completion_tokens: int, batch: bool = True
    ) -> Decimal:
        """Exact USD of one request."""
        rates = self.rates(prompt_tokens, batch)
        uncached = prompt_tokens - cached_tokens
        return (
            uncached * rates.input + cached_tokens * rates.cached_input + completion_tokens * rates.output
        ) / MILLION


@dataclass(frozen=True)
class Cost:
    """The cost of one request at batch price and where the price came from."""

    usd: Decimal
    source: str


def request_cost(
    model: str,
    prompt_tokens: int,
    cached_tokens: int = 0,
    completion_tokens: int = 0,
    reasoning_tokens: int = 0,
    *,
    job_dir: Path | None = None,
    batch: bool = True,
) -> Cost:
    """Cost of one result row (the API's usage fields) at batch price (or standard with batch=False).

    `reasoning_tokens` are already inside `completion_tokens` and are not added again.
    """
    if (
        min(prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens) < 0
        or cached_tokens > prompt_tokens
    ):
        raise PricingError(
            f"impossible usage for {model}: prompt {prompt_tokens}, cached {cached_tokens}, "
            f"completion {completion_tokens}, reasoning {reasoning_tokens}"
        )
    price = get_price(model, job_dir=job_dir)
    return Cost(price.cost(prompt_tokens, cached_tokens, completion_tokens, batch), price.source)


@dataclass(frozen=True)
class PriceFile:
    """A user price file as it was read: its TOML text and where it was read from (which names its prices' source).

    A job keeps its price file so (in its spec, and in the ledger) to price its results the same way once its
    directory is gone.
    """

    origin: str
    text: str

    @property
    def version(self) -> str:
        """Where the file was read and which text it held: the source every price from it carries, so that two
        versions of a price file are told apart in the ledger."""
        return f"{self.origin} (sha256 {hashlib.sha256(self.text.encode()).hexdigest()[:12]})"


def read_price_file(job_dir: Path | str | None) -> PriceFile | None:
    """The job directory's `prices.toml`, read now; None when there is none."""
    if job_dir is None or not (Path(job_dir) / USER_FILE).is_file():
        return None
    path = Path(job_dir) / USER_FILE
    return PriceFile(str(path), _read_text(path))


def get_price(model: str, *, job_dir: Path | str | None = None, price_file: PriceFile | None = None,
              at: datetime | None = None, free: bool = False, local: bool = False) -> ModelPrice:
    """The price of a model (see the module docstring for the order of sources). `price_file` is a job's price file
    as it was read, in place of the one in `job_dir`. `free`: the backend serves the model at no cost (a job's
    `free = true`, for a local model); `local`: the backend is a server on this machine (see `is_loopback_url`);
    either way a model no user price file names costs $0."""
    user = _env_file() or price_file or read_price_file(job_dir)
    day = (at or datetime.now(timezone.utc)).date().isoformat()
    return _get_price(model, user, day, FREE_SOURCE if free else LOCAL_SOURCE if local else None)


def is_loopback_url(url: str) -> bool:
    """Whether a base URL names this machine: localhost, 127.0.0.0/8 or ::1 (a server there bills nothing)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_file() -> PriceFile | None:
    if not os.environ.get(ENV_VAR):
        return None
    path = Path(os.environ[ENV_VAR])
    return PriceFile(str(path), _read_text(path))


@lru_cache(maxsize=256)
def _get_price(model: str, user: PriceFile | None, day: str, free: str | None = None) -> ModelPrice:
    """`free`: the source of a $0 price for a model no user price file names, or None."""
    if user is not None:
        entry = _match(_parse_table(user), model)
        if entry is not None:
            return _from_entry(model, entry, user.version)
    if free is not None:
        nothing = Rates(Decimal(0), Decimal(0), Decimal(0))
        return ModelPrice(model, nothing, nothing, free)
    entry = _match(_project_table(), model)
    if entry is not None:
        return _from_entry(model, entry, f"batchgen {__version__} price table")
    price = _from_genai_prices(model, day)
    if price is None:
        where = f"{user.origin} or " if user else ""
        raise PricingError(
            f'No price known for model {model!r}: add [models."{model}"] with input and output '
            f"prices (USD per 1M tokens) to {where}prices.toml in the job directory or to the file "
            f"named by {ENV_VAR} (see README 'Costs')"
        )
    return price


@lru_cache(maxsize=1)
def _project_table() -> dict[str, Any]:
    text = files("batchgen").joinpath("data", "prices.toml").read_text(encoding="utf-8")
    models: dict[str, Any] = tomllib.loads(text).get("models", {})
    return models


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PricingError(f"Price file {path} not found (named by {ENV_VAR} or the job)") from None
    except IsADirectoryError:
        raise PricingError(f"Price file {path} is a directory; {ENV_VAR} names a TOML file") from None
    except UnicodeDecodeError as error:
        raise PricingError(f"Price file {path} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise PricingError(f"Cannot read price file {path}: {error.strerror or error}") from None


def _parse_table(user: PriceFile) -> dict[str, Any]:
    try:
        data = tomllib.loads(user.text)
    except tomllib.TOMLDecodeError as error:
        raise PricingError(f"{user.origin}: TOML syntax error: {error}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PricingError(f'{user.origin}: expected tables [models."<name>"]')
    return models


def _match(table: dict[str, Any], model: str) -> dict[str, Any] | None:
    if model in table:
        return dict(table[model])
    for pattern in sorted(table, key=len, reverse=True):
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
            return dict(table[pattern])
    return None


def _money(entry: dict[str, Any], key: str, default: Decimal | None, where: str) -> Decimal:
    value = entry.get(key)
    if value is None:
        if default is None:
            raise PricingError(f"{where}: '{key}' is required (USD per 1M tokens)")
        return default
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise PricingError(f"{where}: '{key}' = {value!r} is not a number") from None
    if amount < 0 or not amount.is_finite():
        raise PricingError(f"{where}: '{key}' = {value!r} must be a price >= 0")
    return amount


def _rates_from(entry: dict[str, Any], where: str) -> tuple[Rates, Rates]:
    half = Decimal("0.5")
    std_in = _money(entry, "input", None, where)
    std_out = _money(entry, "output", None, where)
    standard = Rates(std_in, _money(entry, "cached_input", std_in, where), std_out)
    b_in = _money(entry, "batch_input", std_in * half, where)
    batch = Rates(
        b_in,
        _money(entry, "batch_cached_input", b_in, where),
        _money(entry, "batch_output", std_out * half, where),
    )
    return standard, batch


def _from_entry(model: str, entry: dict[str, Any], origin: str) -> ModelPrice:
    where = f'{origin} [models."{model}"]'
    standard, batch = _rates_from(entry, where)
    source = f"{origin}: {entry['source']}" if entry.get("source") else origin
    long = entry.get("long_context")
    if long is None:
        return ModelPrice(model, standard, batch, source)
    long_standard, long_batch = _rates_from(dict(long), where + ".long_context")
    return ModelPrice(model, standard, batch, source, int(long.get("above", 0)), long_standard, long_batch)


def _from_genai_prices(model: str, day: str) -> ModelPrice | None:
    from genai_prices import Usage, __version__, calc_price
    from genai_prices.types import TieredPrices

    when = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    found: dict[str, Any] = {}
    for mode, context in (("standard", None), ("batch", {"processing": "batch"})):
        try:
            result = calc_price(
                Usage(input_tokens=1, output_tokens=1),
                model_ref=model,
                provider_id="openai",
                genai_request_timestamp=when,
                price_context=context,
            )
        except LookupError:
            return None
        found[mode] = result
    tiers: dict[str, tuple[Rates, int | None, Rates | None]] = {}
    for mode, result in found.items():
        mp = result.model_price
        values = [getattr(mp, key) for key in ("input_mtok", "cache_read_mtok", "output_mtok")]
        if mode == "batch" and not _batch_names_cached_rate(result.model, when):
            values[1] = None  # cached input pays the batch input rate, not the standard cached one
        base = [v.base if isinstance(v, TieredPrices) else v for v in values]
        base_in = base[0] if base[0] is not None else Decimal(0)
        rates = Rates(base_in, base[1] if base[1] is not None else base_in, base[2] or Decimal(0))
        tiered = [v for v in values if isinstance(v, TieredPrices) and v.tiers]
        above, long = None, None
        if tiered:
            above = tiered[0].tiers[0].start
            tops = [
                v.tiers[0].price if isinstance(v, TieredPrices) and v.tiers else b
                for v, b in zip(values, base, strict=True)
            ]
            long = Rates(
                tops[0] or base_in,
                tops[1] if tops[1] is not None else tops[0] or base_in,
                tops[2] or Decimal(0),
            )
        tiers[mode] = (rates, above, long)
    std, above, long_std = tiers["standard"]
    batch, batch_above, long_batch = tiers["batch"]
    source = f"genai-prices {__version__} (openai/{found['standard'].model.id}, prices of {day})"
    return ModelPrice(model, std, batch, source, above or batch_above, long_std, long_batch)


def _batch_names_cached_rate(model: Any, when: datetime) -> bool:
    """Whether genai-prices' batch variant of the model, in force on `when`, names a cached-input rate of its own.

    Where the Batch API's price table has none ("-": gpt-4o, gpt-4.1, o3, o4-mini, ...), genai-prices keeps the
    standard cached rate under processing=batch; OpenAI bills such cached input at the batch input rate
    (spec/batch-api.md section 7), so that is what batchgen prices it at."""
    for variant in getattr(model, "price_variants", None) or ():
        if variant.when.get("processing") != "batch":
            continue
        if variant.constraint is not None and not variant.constraint.active(when):
            continue
        if variant.prices.cache_read_mtok is not None:
            return True
    return False


def clear_cache() -> None:
    """Forget resolved prices (after a price file changed)."""
    _get_price.cache_clear()
