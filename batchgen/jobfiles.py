"""Reading a job directory: job.toml, the seed file and the templates, each problem as one SpecError line.

Used by `batchgen.spec.load_spec`; nothing here is read outside the job directory except the price tables,
which `batchgen.pricing` reads to check that the model has a price.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, ValidationError

from batchgen import formats
from batchgen.errors import PricingError, SpecError
from batchgen.spec import CHAT, JOB_FILE, JobSpec, StageSpec, spec_digest
from batchgen.tokens import UnknownEncoding, encoding_name_for_model


def load_job(job_dir: Path) -> JobSpec:
    """Load and check a job directory (see `batchgen.spec.load_spec`)."""
    toml_path = job_dir / JOB_FILE
    if not job_dir.is_dir():
        raise SpecError(f"No job directory {job_dir}; create one with 'batchgen init NAME'")
    if not toml_path.is_file():
        raise SpecError(f"No {JOB_FILE} in {job_dir}; create a job with 'batchgen init NAME'")
    text = toml_path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{toml_path}: TOML syntax error: {error}") from None
    data.setdefault("name", job_dir.resolve().name)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(explain(error, text, toml_path)) from None
    _check_model(spec, job_dir)
    seeds, seeds_bytes = _load_seeds(spec, job_dir)
    templates = {}
    raws: list[StageSpec | None] = list(spec.stages) or [None]
    for stage, raw in zip(spec.resolved_stages(), raws, strict=True):
        key = f"stages.{stage.name}.template" if raw is not None and raw.template else "prompt.template"
        templates[stage.template] = _job_file(job_dir, stage.template, key).read_text(encoding="utf-8")
    spec._dir = job_dir
    spec._seeds = tuple(seeds)
    spec._templates = templates
    spec._hash = spec_digest(spec, templates, seeds_bytes)
    from batchgen.render import check_templates

    check_templates(spec)
    return spec


def _check_model(spec: JobSpec, job_dir: Path) -> None:
    from batchgen.pricing import get_price

    try:
        encoding_name_for_model(spec.model)
    except UnknownEncoding:
        raise SpecError(
            f"model = {spec.model!r}: no tokenizer is known for it, so its tokens cannot be counted; "
            "use an OpenAI model name (gpt-4o-mini, gpt-4.1-nano, gpt-5-nano ...)"
        ) from None
    try:
        get_price(spec.model, job_dir=job_dir)
    except PricingError as error:
        raise SpecError(str(error)) from None
    if spec.endpoint != CHAT and spec.stages and any(s.from_ for s in spec.stages):
        raise SpecError(f"endpoint = {spec.endpoint!r}: stages with 'from' need /v1/chat/completions")


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
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
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
    """One line for pydantic errors: `[<path>[ line N]: ]loc: message[; did you mean 'x'?]`, joined by '; '"""
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


def template_error(spec: JobSpec, template: str, error: Exception) -> SpecError:
    """A SpecError naming the template file and line for a Jinja2 error."""
    path = spec.job_dir / template
    if isinstance(error, jinja2.TemplateSyntaxError):
        return SpecError(f"{path} line {error.lineno}: template syntax error: {error.message}")
    line = _template_line(error, str(path))
    return SpecError(f"{path}{f' line {line}' if line else ''}: {error}")


def _template_line(error: BaseException, filename: str) -> int | None:
    import traceback

    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == filename:
            return frame.lineno
    return None


# --- scaffolding a new job ------------------------------------------------------------------------------

_INIT_TOML = """# A batchgen job; plan it with: batchgen plan {path}
name = "{name}"
description = "Describe what the dataset teaches"
model = "{model}"
format = "{fmt}"
target = 100                 # valid examples wanted
examples_per_request = 10    # examples asked for per request (1..50)
overgeneration = 1.1         # extra requests for invalid and duplicate examples
budget_usd = 0.05

[prompt]
system = "You generate training data in JSON format."
template = "prompt.j2"
seeds = "seeds.jsonl"
seeds_per_request = 3
temperature = [0.7, 1.0]
max_tokens = 2000
structured_output = "json_schema"

[axes]
strategy = "cross"

[axes.values]
style = ["formal", "casual", "question"]
difficulty = ["easy", "hard"]

[validate]
response_patterns = []
min_turns = 2
max_turns = 10
"""

_INIT_PROMPT = """You are generating training examples for an assistant.

## Examples
{{ seed_examples }}

## Your Task
Generate {{ count }} NEW examples in the same format that:
1. Use a {{ style }} phrasing style
2. Are {{ difficulty }} for the assistant to answer
3. Do NOT repeat the examples above

Return a JSON object {"examples": [...]} holding {{ count }} examples.
"""

_INIT_SEEDS = [
    ("How many days are there in a leap year?", "A leap year has 366 days: February gets a 29th day."),
    ("Could you convert 5 kilometres to miles?", "5 kilometres is about 3.11 miles (1 km = 0.621 miles)."),
    ("what's the capital of australia", "The capital of Australia is Canberra, not Sydney."),
]


def scaffold_job(
    name: str, parent: Path = Path("jobs"), *, model: str = "gpt-4o-mini", fmt: str = "sharegpt"
) -> Path:
    """Create `<parent>/<name>/` with job.toml, prompt.j2 and seeds.jsonl; the job loads and plans as is."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", name):
        raise SpecError(f"Job name {name!r}: use letters, digits, '_', '.', '-' (at most 40 characters)")
    if fmt not in formats.FORMATS:
        raise SpecError(f"Unknown format {fmt!r}; choose one of {', '.join(formats.FORMATS)}")
    job_dir = parent / name
    if job_dir.exists():
        raise SpecError(f"{job_dir} already exists; choose another name or remove it")
    turns = [
        [formats.Turn(role="user", content=q), formats.Turn(role="assistant", content=a)]
        for q, a in _INIT_SEEDS
    ]
    seeds = "".join(json.dumps(formats.from_turns(t, fmt), ensure_ascii=False) + "\n" for t in turns)
    try:
        job_dir.mkdir(parents=True)
        (job_dir / JOB_FILE).write_text(
            _INIT_TOML.format(name=name, model=model, fmt=fmt, path=job_dir), encoding="utf-8"
        )
        (job_dir / "prompt.j2").write_text(_INIT_PROMPT, encoding="utf-8")
        (job_dir / "seeds.jsonl").write_text(seeds, encoding="utf-8")
    except OSError as error:
        raise SpecError(f"Cannot create {job_dir}: {error.strerror or error}") from None
    return job_dir
