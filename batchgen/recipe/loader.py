"""Reading a job directory: job.toml, the seed file and the templates, each problem as one SpecError line.

`load_spec` is the way in; nothing here is read outside the job directory except the price tables,
which `batchgen.recipe.pricing` reads to check that the model has a price.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from batchgen.errors import PricingError, SpecError
from batchgen.recipe import formats
from batchgen.recipe.model_limits import output_limit
from batchgen.recipe.pricing import PriceFile, get_price, read_price_file
from batchgen.recipe.render import check_templates, max_tokens_param
from batchgen.recipe.spec import CHAT, CHECK_REF, JOB_FILE, JobSpec, StageSpec
from batchgen.recipe.tokens import UnknownEncoding, encoding_name_for_model
from batchgen.recipe.variants import MAX_JOB_REQUESTS, job_request_count


def resolve_job_dir(ref: str | Path) -> Path:
    """A job directory from a path or a bare name under ./jobs."""
    path = Path(ref)
    if path.is_dir() or path.suffix == ".toml" or path.parent != Path("."):
        return path.parent if path.name == JOB_FILE else path
    candidate = Path("jobs") / path
    return candidate if candidate.is_dir() else path


def load_spec(job_dir: str | Path) -> JobSpec:
    """Load, validate and check a job directory; raises SpecError with one line on any problem."""
    return load_job(resolve_job_dir(job_dir))


def load_job(job_dir: Path) -> JobSpec:
    """Load and check a job directory (see `load_spec`)."""
    toml_path = job_dir / JOB_FILE
    if not job_dir.is_dir():
        raise SpecError(f"No job directory {job_dir}; create one with 'batchgen init NAME'")
    if not toml_path.is_file():
        raise SpecError(f"No {JOB_FILE} in {job_dir}; create a job with 'batchgen init NAME'")
    text = _text(toml_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{toml_path}: TOML syntax error: {error}") from None
    data.setdefault("name", job_dir.resolve().name)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(explain(error, text, toml_path)) from None
    try:
        price_file = read_price_file(job_dir)
    except PricingError as error:
        raise SpecError(str(error)) from None
    _check_model(spec, price_file)
    _check_max_tokens(spec, text, toml_path)
    _check_size(spec, text, toml_path)
    seeds, seeds_bytes = _load_seeds(spec, job_dir)
    templates = {}
    raws: list[StageSpec | None] = list(spec.stages) or [None]
    for stage, raw in zip(spec.resolved_stages(), raws, strict=True):
        key = f"stages.{stage.name}.template" if raw is not None and raw.template else "prompt.template"
        templates[stage.template] = _text(_job_file(job_dir, stage.template, key))
    _check_checks(spec, job_dir)
    spec = spec.loaded(job_dir, tuple(seeds), templates, seeds_bytes, price_file)
    check_templates(spec)
    return spec


def _check_checks(spec: JobSpec, job_dir: Path) -> None:
    """Each rule hook's file is a Python file inside the job directory (its function is looked up when it runs)."""
    if spec.validate_.checks and spec.endpoint != CHAT:
        raise SpecError("validate.checks: an embeddings job's answers are vectors, which checks do not judge")
    root = job_dir.resolve()
    for check in spec.validate_.checks:
        found = CHECK_REF.match(check)
        assert found is not None  # the spec's validator matched it
        path = (job_dir / found["file"]).resolve()
        if not path.is_relative_to(root):
            raise SpecError(f"validate.checks: {check!r} names a file outside the job directory {job_dir}")
        _job_file(job_dir, found["file"], "validate.checks")


def _text(path: Path) -> str:
    """A job file's text; a SpecError when it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise SpecError(f"{path} line {line}: not UTF-8 text (byte {error.start}); save the file as UTF-8") from None


def _check_model(spec: JobSpec, price_file: PriceFile | None) -> None:
    try:
        encoding_name_for_model(spec.model)
    except UnknownEncoding:
        raise SpecError(
            f"model = {spec.model!r}: no tokenizer is known for it, so its tokens cannot be counted; "
            "use an OpenAI model name (gpt-4o-mini, gpt-4.1-nano, gpt-5-nano ...)"
        ) from None
    try:
        get_price(spec.model, price_file=price_file, free=spec.free)
    except PricingError as error:
        raise SpecError(str(error)) from None
    if spec.endpoint != CHAT and spec.stages and any(s.from_ for s in spec.stages):
        raise SpecError(f"endpoint = {spec.endpoint!r}: stages with 'from' need /v1/chat/completions")


def _check_max_tokens(spec: JobSpec, text: str, toml_path: Path) -> None:
    """max_tokens within the model's output limit, which the API enforces on every line (when the limit is known)."""
    limit = output_limit(spec.model) if spec.endpoint == CHAT else None
    if limit is None:
        return
    raws: list[StageSpec | None] = list(spec.stages) or [None]
    for stage, raw in zip(spec.resolved_stages(), raws, strict=True):
        if stage.max_tokens <= limit.tokens:
            continue
        key = f"stages.{stage.name}.max_tokens" if raw is not None and raw.max_tokens else "prompt.max_tokens"
        param = max_tokens_param(spec.model)
        sent = f" (sent as {param})" if param != "max_tokens" else ""
        whose = spec.model if limit.model == spec.model else f"{spec.model} ({limit.model})"
        match = re.search(rf"^\s*max_tokens\s*=\s*{stage.max_tokens}\b", text, re.MULTILINE)
        number = text.count("\n", 0, match.start()) + 1 if match else 0
        where = f" line {number}" if number else ""
        raise SpecError(f"{toml_path}{where}: {key} = {stage.max_tokens}{sent} is above {whose}'s output limit "
                        f"of {limit.tokens:,} tokens; lower it to {limit.tokens:,} or less")


def _check_size(spec: JobSpec, text: str, toml_path: Path) -> None:
    """No more requests than MAX_JOB_REQUESTS (see batchgen.recipe.variants for why that many)."""
    requests = job_request_count(spec)
    if requests <= MAX_JOB_REQUESTS:
        return
    line = _line_of(text, ["target"])
    what = ("the targets of its stages need" if any(s.target for s in spec.stages)
            else f"target = {spec.target:,} needs")
    raise SpecError(
        f"{toml_path}{f' line {line}' if line else ''}: {what} {requests:,} requests, more than the "
        f"{MAX_JOB_REQUESTS:,} one job may plan ({MAX_JOB_REQUESTS // 50_000} full batches of 50,000, the Batch "
        "API's most); lower the target, raise examples_per_request, or split the job"
    )


def _load_seeds(spec: JobSpec, job_dir: Path) -> tuple[list[dict[str, Any]], bytes]:
    name = spec.prompt.seeds
    if name is None:
        if spec.prompt.seeds_per_request and any(s.source is None for s in spec.resolved_stages()):
            raise SpecError(
                f"prompt.seeds_per_request = {spec.prompt.seeds_per_request} but prompt.seeds names no "
                'file; add seeds = "seeds.jsonl" or set seeds_per_request = 0'
            )
        return [], b""
    path = _job_file(job_dir, name, "prompt.seeds")
    raw = path.read_bytes()
    seeds: list[dict[str, Any]] = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise SpecError(f"{path} line {number}: not JSON: {error.msg} (column {error.colno})") from None
        try:
            example = formats.parse_example(data, spec.format)
        except ValidationError as error:
            raise SpecError(
                f"{path} line {number}: not a valid {spec.format} example: {explain(error)}"
            ) from None
        seeds.append(formats.dump_example(example))
    needed = spec.prompt.seeds_per_request
    if needed > len(seeds) and any(s.source is None for s in spec.resolved_stages()):
        raise SpecError(
            f"prompt.seeds_per_request = {needed} but {path} holds {len(seeds)} seed examples; "
            "add seeds or lower seeds_per_request"
        )
    return seeds, raw


def _job_file(job_dir: Path, name: str, key: str) -> Path:
    path = job_dir / name
    if not path.is_file():
        raise SpecError(f"{key} = {name!r}: file {path} not found")
    return path


# --- rendering pydantic errors as one line -----------------------------------------------------------------


def explain(error: ValidationError, toml_text: str | None = None, path: Path | None = None) -> str:
    """The one rendering of pydantic errors for people (the loader's and the command line's): one line,
    `[<path>[ line N]: ]loc: message[; did you mean 'x'?]` per error, joined by '; '."""
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        where = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
            hint = _did_you_mean(loc)
            if hint:
                message += f"; did you mean '{hint}'?"
            where = ".".join(loc[:-1])
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"]
            if (
                item["type"] not in ("value_error",)
                and "input" in item
                and not isinstance(item["input"], dict)
            ):
                message += f" (got {item['input']!r})"
            message = message.replace("Value error, ", "")
        line = _line_of(toml_text, loc) if toml_text else None
        head = f"{path}{' line ' + str(line) if line else ''}: " if path else ""
        parts.append(f"{head}{where + ': ' if where else ''}{message}")
    return "; ".join(parts)


def _did_you_mean(loc: list[str]) -> str | None:
    model: Any = JobSpec
    for part in loc[:-1]:
        if part.isdigit():
            continue
        field = _fields(model).get(part)
        if field is None:
            return None
        model = field
    names = list(_fields(model))
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    return close[0] if close else None


def _fields(model: Any) -> dict[str, Any]:
    """Field name (TOML spelling) → the nested model class, for did-you-mean lookups."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        nested = info.annotation
        args = getattr(nested, "__args__", ())
        for candidate in (nested, *args):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                nested = candidate
        out[info.alias or name] = nested
    return out


def _line_of(text: str, loc: list[str]) -> int | None:
    """Best effort: the line where the last key of `loc` is set in job.toml."""
    keys = [p for p in loc if not p.isdigit()]
    if not keys:
        return None
    pattern = re.compile(rf"^\s*\"?{re.escape(keys[-1])}\"?\s*=", re.MULTILINE)
    table = re.compile(rf"^\s*\[+\s*{re.escape('.'.join(keys))}\s*\]+", re.MULTILINE)
    match = pattern.search(text) or table.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None
