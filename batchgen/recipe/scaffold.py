"""`batchgen init NAME`: a new job directory that loads and plans as it is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from batchgen.errors import PricingError, SpecError
from batchgen.recipe import formats
from batchgen.recipe.pricing import get_price
from batchgen.recipe.spec import JOB_FILE, JOB_NAME

MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}"

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
    if not re.fullmatch(JOB_NAME, name):
        raise SpecError(f"Job name {name!r}: use letters, digits, '_', '.', '-' (at most 40 characters)")
    if not re.fullmatch(MODEL_NAME, model):
        raise SpecError(f"Model {model!r}: a model name is letters, digits and '.', '_', ':', '/', '-'")
    try:
        get_price(model, job_dir=parent / name)
    except PricingError as error:
        raise SpecError(f"Model {model!r} has no known price, so the job could not plan: {error}") from None
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
