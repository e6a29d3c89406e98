"""The organization's usage and what it cost: the records behind `GET /v1/organization/usage/completions` and
`GET /v1/organization/costs` (spec §8), persisted in `<state>/usage.jsonl`.

Every answered request (2xx) is counted once: a batch's lines when the batch ends (one record per batch and model,
at its completed, expired or cancelled time, summed while its lines are committed), a synchronous call when it is
answered, and the records `POST /_emulator/usage/adjust` plants. Records are keyed (`batch:<id>:<model>`,
`sync:<request id>`, `adjust:<id>`), appended and fsynced; loading keeps the first record of a key, so a batch
whose end is run again after a crash is never counted twice. A torn last line (a crash mid-append) is cut off.

Costs are batchgen's own prices (`batchgen.recipe.pricing`): batch lines at batch price, synchronous calls at
standard price, each request priced alone (long-context tiers apply per request). A model without a known price,
and every line an upstream server answered, costs $0. Money stays Decimal and is written as an exact JSON number.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from batchgen.emulator.apierror import bad_request
from batchgen.emulator.fsutil import fsync_dir, naming, write_all

USAGE_FILE = "usage.jsonl"
WIDTHS = {"1m": 60, "1h": 3600, "1d": 86_400}
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, maximum) buckets per page
COSTS_LIMITS = (7, 180)
USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "api_source")
COSTS_GROUPS = ("project_id", "line_item", "api_key_id", "api_source")


@dataclass(frozen=True)
class UsageRecord:
    """Requests of one model at one emulated time, batch or not, their tokens and their exact cost."""

    key: str
    time: int
    model: str
    batch: bool
    input: int
    cached: int
    output: int
    requests: int
    cost: Decimal

    def to_json(self) -> bytes:
        return orjson.dumps({"key": self.key, "time": self.time, "model": self.model, "batch": self.batch,
                             "input": self.input, "cached": self.cached, "output": self.output,
                             "requests": self.requests, "cost": str(self.cost)})

    @classmethod
    def parse(cls, raw: bytes) -> UsageRecord:
        data = orjson.loads(raw)
        return cls(str(data["key"]), int(data["time"]), str(data["model"]), bool(data["batch"]), int(data["input"]),
                   int(data["cached"]), int(data["output"]), int(data["requests"]), Decimal(str(data["cost"])))


class Pricer:
    """The exact cost of one request; prices are looked up once per model and kept."""

    def __init__(self, free: bool = False) -> None:
        self.free = free
        self._prices: dict[str, Any] = {}
        self._lock = threading.Lock()

    def cost(self, model: str, prompt: int, cached: int, completion: int, batch: bool) -> Decimal:
        if self.free:
            return Decimal(0)
        price = self._price(model)
        if price is None:
            return Decimal(0)
        result: Decimal = price.cost(prompt, min(cached, prompt), completion, batch)
        return result

    def _price(self, model: str) -> Any:
        with self._lock:
            if model in self._prices:
                return self._prices[model]
        from batchgen.recipe.pricing import PricingError, get_price

        try:
            price: Any = get_price(model)
        except PricingError:
            price = None
        with self._lock:
            self._prices[model] = price
        return price


def tally(totals: dict[str, Any], model: str, body: Any, cost: Callable[[str, int, int, int, bool], Decimal],
          batch: bool = True) -> None:
    """Add one answer's usage to `totals` (model -> counters, JSON-safe: the cost is a string)."""
    prompt, cached, completion = answer_tokens(body)
    entry = totals.setdefault(model, {"input": 0, "cached": 0, "output": 0, "requests": 0, "cost": "0"})
    entry["input"] += prompt
    entry["cached"] += cached
    entry["output"] += completion
    entry["requests"] += 1
    entry["cost"] = str(Decimal(entry["cost"]) + cost(model, prompt, cached, completion, batch))


def answer_tokens(body: Any) -> tuple[int, int, int]:
    """Input, cached input and output tokens of a chat or embeddings answer."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
    completion = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return prompt, int(details.get("cached_tokens", 0) or 0), completion


class UsageStore:
    """The usage records of one state directory, in memory and in `usage.jsonl`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / USAGE_FILE
        self._lock = threading.Lock()
        self._records: list[UsageRecord] = []
        self._keys: set[str] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        complete = raw.rfind(b"\n") + 1
        if complete < len(raw):  # a crash cut the last append short: it never counted
            with naming(self.path), open(self.path, "r+b") as handle:
                handle.truncate(complete)
                os.fsync(handle.fileno())
        for line in raw[:complete].splitlines():
            if not line.strip():
                continue
            try:
                record = UsageRecord.parse(line)
            except (ValueError, KeyError, TypeError, InvalidOperation):
                continue
            if record.key not in self._keys:
                self._keys.add(record.key)
                self._records.append(record)

    def add(self, records: Sequence[UsageRecord]) -> None:
        """Append the records whose key is new, durably; a write the disk refuses raises and adds nothing."""
        with self._lock:
            new = [r for r in records if r.key not in self._keys]
            if not new:
                return
            created = not self.path.exists()
            with naming(self.path):
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    write_all(fd, b"".join(r.to_json() + b"\n" for r in new))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if created:
                fsync_dir(self.path.parent)
            for record in new:
                self._keys.add(record.key)
                self._records.append(record)

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._keys

    def records(self) -> list[UsageRecord]:
        with self._lock:
            return list(self._records)


def batch_records(batch_id: str, when: int, totals: Mapping[str, Any] | None) -> list[UsageRecord]:
    """The records of a batch that ended at `when`, from the per-model totals summed while its lines ran."""
    return [UsageRecord(f"batch:{batch_id}:{model}", when, model, True, int(t["input"]), int(t["cached"]),
                        int(t["output"]), int(t["requests"]), Decimal(str(t["cost"])))
            for model, t in sorted((totals or {}).items()) if int(t["requests"])]


# -- the two endpoints ------------------------------------------------------------------------------------------

class Query:
    """The parameters of one usage or costs request, checked as the API checks them."""

    def __init__(self, params: Any, now: float, costs: bool) -> None:
        self.costs = costs
        self.start = _int_param(params, "start_time", required=True) or 0
        end = _int_param(params, "end_time")
        self.end = end if end is not None else int(now) + 1
        width = params.get("bucket_width") or "1d"
        if width not in (("1d",) if costs else WIDTHS):
            allowed = "'1d'" if costs else "'1m', '1h' or '1d'"
            raise bad_request(f"Invalid 'bucket_width': {width!r}; expected {allowed}.", param="bucket_width",
                              code="invalid_value")
        self.width = WIDTHS[width]
        default, most = COSTS_LIMITS if costs else USAGE_LIMITS[width]
        limit = _int_param(params, "limit")
        self.limit = default if limit is None else limit
        if not 1 <= self.limit <= most:
            raise bad_request(f"Invalid 'limit': {self.limit}; expected 1 to {most} for bucket_width {width}.",
                              param="limit", code="invalid_value")
        self.group_by = _list_param(params, "group_by")
        allowed_groups = COSTS_GROUPS if costs else USAGE_GROUPS
        for name in self.group_by:
            if name not in allowed_groups:
                raise bad_request(f"Invalid 'group_by' value {name!r}; expected some of {', '.join(allowed_groups)}.",
                                  param="group_by", code="invalid_value")
        self.models = set(_list_param(params, "models"))
        batch = params.get("batch")
        if batch not in (None, "true", "false", "True", "False", "1", "0"):
            raise bad_request(f"Invalid 'batch': {batch!r}; expected true or false.", param="batch",
                              code="invalid_value")
        self.batch = None if costs or batch is None else batch in ("true", "True", "1")
        if self.end <= self.start:
            raise bad_request("'end_time' must be after 'start_time'.", param="end_time", code="invalid_value")
        self.first = self.start // self.width * self.width
        self.offset = _cursor(params.get("page"), self.first)

    def wanted(self, record: UsageRecord) -> bool:
        return (self.start <= record.time < self.end and (self.batch is None or record.batch == self.batch)
                and (not self.models or record.model in self.models))


def usage_page(records: Sequence[UsageRecord], params: Any, now: float) -> bytes:
    """The JSON of one page of `GET /organization/usage/completions`."""
    return _page(records, Query(params, now, costs=False), _usage_results)


def costs_page(records: Sequence[UsageRecord], params: Any, now: float) -> bytes:
    """The JSON of one page of `GET /organization/costs` (amounts exact)."""
    return _page(records, Query(params, now, costs=True), _cost_results)


def _page(records: Sequence[UsageRecord], query: Query,
          results: Callable[[list[UsageRecord], Query], list[dict[str, Any]]]) -> bytes:
    count = -(-(query.end - query.first) // query.width)  # buckets in the range, empty ones too
    shown = range(query.offset, min(count, query.offset + query.limit))
    by_bucket: dict[int, list[UsageRecord]] = {}
    for record in records:
        if query.wanted(record):
            by_bucket.setdefault((record.time - query.first) // query.width, []).append(record)
    data = []
    for index in shown:
        start = query.first + index * query.width
        data.append({"object": "bucket", "start_time": start, "end_time": start + query.width,
                     "results": results(by_bucket.get(index, []), query)})
    more = shown.stop < count
    page = {"object": "page", "data": data, "has_more": more,
            "next_page": _next_cursor(query.first, shown.stop) if more else None}
    return orjson.dumps(page)


def _usage_results(records: list[UsageRecord], query: Query) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for record in records:
        key = (record.model if "model" in query.group_by else None,
               record.batch if "batch" in query.group_by else None)
        sums = groups.setdefault(key, [0, 0, 0, 0])
        sums[0] += record.input
        sums[1] += record.cached
        sums[2] += record.output
        sums[3] += record.requests
    out = []
    for (model, batch), (tokens, cached, output, requests) in sorted(groups.items(), key=lambda g: str(g[0])):
        out.append({"object": "organization.usage.completions.result", "input_tokens": tokens,
                    "output_tokens": output, "input_cached_tokens": cached, "input_uncached_tokens": tokens - cached,
                    "input_cache_write_tokens": 0, "input_text_tokens": tokens - cached,
                    "input_cached_text_tokens": cached, "output_text_tokens": output, "input_audio_tokens": 0,
                    "input_cached_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": requests,
                    "project_id": None, "user_id": None, "api_key_id": None, "model": model, "batch": batch,
                    "service_tier": "default" if "service_tier" in query.group_by else None})
    return out


def _cost_results(records: list[UsageRecord], query: Query) -> list[dict[str, Any]]:
    if not records:
        return []
    groups: dict[str | None, list[Any]] = {}
    for record in records:
        item = f"{record.model}, {'batch' if record.batch else 'standard'}" if "line_item" in query.group_by \
            else None
        sums = groups.setdefault(item, [Decimal(0), 0])
        sums[0] += record.cost
        sums[1] += record.input + record.output
    return [{"object": "organization.costs.result",
             "amount": {"value": orjson.Fragment(decimal_json(value)), "currency": "usd"},
             "line_item": item, "project_id": None, "api_key_id": None,
             "quantity": tokens if item is not None else None, "quantity_unit": "tokens" if item is not None else None}
            for item, (value, tokens) in sorted(groups.items(), key=lambda g: str(g[0]))]


def decimal_json(value: Decimal) -> str:
    """A finite Decimal as a plain JSON number, every digit kept ("0.0000015", "-2", "0")."""
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def _int_param(params: Any, name: str, required: bool = False) -> int | None:
    """An integer parameter (None when absent); a missing required one is the API's 400."""
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise bad_request(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Invalid '{name}': expected an integer, got {raw!r}.", param=name,
                          code="invalid_type") from None


def _list_param(params: Any, name: str) -> list[str]:
    """A list parameter as `name[]=a&name[]=b` or `name=a&name=b` (or comma-separated)."""
    getlist = getattr(params, "getlist", None)
    values = (list(getlist(name)) + list(getlist(f"{name}[]"))) if callable(getlist) \
        else [v for v in (params.get(name), params.get(f"{name}[]")) if v]
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def _next_cursor(first: int, index: int) -> str:
    return "page_" + base64.urlsafe_b64encode(orjson.dumps({"first": first, "index": index})).decode().rstrip("=")


def _cursor(page: str | None, first: int) -> int:
    """The bucket a `page` cursor points at (0 without one); a cursor of another range is refused."""
    if not page:
        return 0
    try:
        raw = page.removeprefix("page_")
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if int(data["first"]) != first or int(data["index"]) < 0:
            raise ValueError
        return int(data["index"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise bad_request(f"Invalid 'page': {page!r} is not a cursor of this query.", param="page",
                          code="invalid_value") from None
