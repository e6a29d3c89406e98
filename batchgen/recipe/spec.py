"""The job spec: `jobs/<name>/job.toml` plus the seed file and prompt templates it names.

`batchgen.recipe.loader.load_spec(job_dir)` reads and checks everything a job needs before a request is compiled,
and raises `SpecError` with one line naming the file (and line) and the fix.

Layout of job.toml (every key is optional unless marked; see README "Job spec reference")::

    name = "task_api"                  # default: the directory name
    description = "..."
    model = "gpt-4o-mini"              # required
    endpoint = "/v1/chat/completions"  # or "/v1/embeddings"
    format = "sharegpt"                # sharegpt | alpaca | chatml
    target = 500                       # required: valid examples wanted (per stage, unless it sets one)
    examples_per_request = 10          # 1..50
    overgeneration = 1.1               # requests = ceil(target / examples_per_request * overgeneration)
    budget_usd = 0.15
    backend = "embedded"               # embedded | openai (optional)
    max_attempts = 3
    max_top_ups = 2                    # extra rounds when a stage ends below its target (0: none)
    [prompt]      system, template, seeds, seeds_per_request, temperature (number or list), max_tokens,
                  structured_output
    [axes]        strategy = "cross" | "rotate" | "weighted"
    [axes.values] name = [...]
    [axes.weights] name = {value = weight}
    [validate]    response_patterns, role_order, min_turns, max_turns, dedupe, reject_seed_copies, near_dedupe,
                  near_dedupe_ngrams, checks, reference_date, examples_keys
    [limits]      max_lines, max_bytes, max_queued_tokens (per shard)
    [embeddings]  dimensions, encoding_format (endpoint = "/v1/embeddings" only)
    [[stages]]    name, kind, template, from, target, examples_per_request, temperature, max_tokens, system,
                  threshold

A stage of `kind = "judge"` generates nothing: it scores every valid example of its `from` stage with a rubric
template (`examples_per_request` of them a request, each once) and rejects those scored below its `threshold`
(scores run from 1 to 10). See `batchgen.dataset.judge`.

An embeddings job renders its template into one input text per request, and each answer is one vector: one
example a request (examples_per_request is 1), no overgeneration unless asked, no seeds unless named, and none of
the chat settings (system, temperature, max_tokens, structured_output, the chat checks of [validate]).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, model_validator

from batchgen.errors import JobDirMissing, SpecError
from batchgen.recipe.embeddings import dimensions_problem
from batchgen.recipe.formats import EMBEDDINGS_FORMAT
from batchgen.recipe.pricing import ModelPrice, PriceFile, get_price

JOB_FILE = "job.toml"
# A job name: it names a directory, a dataset file and the ledger rows, so it stays short and plain.
JOB_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}"
AxisValue = str | int | bool
Temperature = Annotated[float, Field(ge=0, le=2)]
CHAT: Final = "/v1/chat/completions"
# A rule hook of `[validate] checks`: a Python file of the job directory and a function in it.
CHECK_REF: Final = re.compile(r"^(?P<file>[^:]+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
EMBEDDINGS: Final = "/v1/embeddings"
# The scores a judge stage gives (lowest, highest), and the threshold it keeps by default.
JUDGE_SCALE: Final = (1, 10)
DEFAULT_THRESHOLD: Final = 7


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class PromptSpec(_Strict):
    """How each request is written."""

    system: str = Field("", description="System message (empty: none)")
    template: str | None = Field(
        None, description="Jinja2 template file of the user message, relative to the job"
    )
    seeds: str | None = Field(None, description="JSONL file of seed examples in the job's format")
    seeds_per_request: int = Field(5, ge=0, le=100)
    temperature: Temperature | list[Temperature] = Field(
        1.0, description="A value, or a list rotated per request"
    )
    max_tokens: int = Field(4000, gt=0, le=1_000_000)
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"

    @property
    def temperatures(self) -> tuple[float, ...]:
        values = self.temperature if isinstance(self.temperature, list) else [self.temperature]
        return tuple(float(v) for v in values)


class AxesSpec(_Strict):
    """Diversity axes: named value lists and how requests are spread over them."""

    strategy: Literal["cross", "rotate", "weighted"] = "cross"
    values: dict[str, list[AxisValue]] = Field(default_factory=dict)
    weights: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> AxesSpec:
        for name, values in self.values.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"axis name {name!r} must be an identifier (letters, digits, _)")
            if not values:
                raise ValueError(f"axis {name!r} has no values")
            if len({json.dumps(v) for v in values}) != len(values):
                raise ValueError(f"axis {name!r} repeats a value")
        for name, weights in self.weights.items():
            if name not in self.values:
                raise ValueError(f"weights given for unknown axis {name!r}")
            known = {str(v).lower() if isinstance(v, bool) else str(v) for v in self.values[name]}
            for key in weights:
                if key not in known:
                    raise ValueError(f"weight for {name}={key!r}, which is not one of its values")
        return self


class ValidateSpec(_Strict):
    """Checks applied to generated examples (run by the validator after collection)."""

    response_patterns: list[str] = Field(
        default_factory=list, description="each assistant turn contains one of these"
    )
    role_order: Literal["alternate", "any"] = "alternate"
    min_turns: int = Field(2, ge=1)
    max_turns: int = Field(50, ge=1)
    dedupe: Literal["exact", "normalized", "none"] = "exact"
    reject_seed_copies: bool = True
    near_dedupe: float | bool = Field(
        0.8, description="Jaccard similarity of word shingles at which an example nearly repeats another; "
                         "false (or 0) turns near-duplicate detection off")
    near_dedupe_ngrams: int = Field(2, ge=1, le=5, description="shingles: words and runs of up to this many words")
    checks: list[str] = Field(default_factory=list, description='rule hooks, "FILE.py:FUNCTION" in the job directory')
    reference_date: dt.date | None = Field(None, description="the date the prompt calls today, given to checks")
    examples_keys: list[str] = Field(
        default_factory=lambda: ["examples"],
        description='keys of an answer object that hold its examples (e.g. ["examples", "data"]), the first found')

    @model_validator(mode="after")
    def _check(self) -> ValidateSpec:
        if self.max_turns < self.min_turns:
            raise ValueError(f"max_turns ({self.max_turns}) is below min_turns ({self.min_turns})")
        if not self.examples_keys or not all(key.strip() for key in self.examples_keys):
            raise ValueError(f"examples_keys must list one or more non-empty keys, not {self.examples_keys!r}")
        if len(set(self.examples_keys)) != len(self.examples_keys):
            raise ValueError("examples_keys names a key twice")
        if self.near_dedupe is True:
            self.near_dedupe = 0.8
        if not 0 <= float(self.near_dedupe) <= 1:
            raise ValueError(f"near_dedupe must be between 0 and 1 (or false), not {self.near_dedupe}")
        for check in self.checks:
            if not CHECK_REF.match(check):
                raise ValueError(f"check {check!r} is not FILE.py:FUNCTION (for example \"checks.py:due_dates\")")
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks names a check twice")
        return self

    @property
    def near_threshold(self) -> float | None:
        """The near-duplicate threshold, or None when near-duplicate detection is off."""
        return float(self.near_dedupe) or None


class LimitsSpec(_Strict):
    """Shard limits; defaults keep every file inside the Batch API limits with a margin."""

    max_lines: int = Field(50_000, gt=0, le=50_000)
    max_bytes: int = Field(190_000_000, gt=0, le=200_000_000)
    max_queued_tokens: int | None = Field(
        None, gt=0, description="cap on input tokens per shard (queued-token limit)"
    )


class EmbeddingsSpec(_Strict):
    """Options of every embeddings request (endpoint = "/v1/embeddings")."""

    dimensions: int | None = Field(
        None, ge=1, description="numbers per vector, for models that can shorten theirs (text-embedding-3-*)"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float lists (the API's default) or base64 float32, about a quarter of the bytes"
    )


class StageSpec(_Strict):
    """One stage. A stage with `from` is compiled from the valid examples of that earlier stage; a judge stage
    scores them instead of evolving them."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,19}$")
    kind: Literal["generate", "judge"] = "generate"
    template: str | None = None
    from_: str | None = Field(None, alias="from")
    target: int | None = Field(None, gt=0)
    examples_per_request: int | None = Field(None, gt=0, le=50)
    temperature: Temperature | list[Temperature] | None = None
    max_tokens: int | None = Field(None, gt=0, le=1_000_000)
    system: str | None = None
    threshold: int | None = Field(None, ge=JUDGE_SCALE[0], le=JUDGE_SCALE[1],
                                  description="a judge stage rejects the examples it scores below this")

    @model_validator(mode="before")
    @classmethod
    def _judge_threshold(cls, data: Any) -> Any:
        """A judge's threshold, written out when left out: the same job either way (and the same spec hash)."""
        if isinstance(data, dict) and data.get("kind") == "judge" and data.get("threshold") is None:
            return {**data, "threshold": DEFAULT_THRESHOLD}
        return data

    @model_validator(mode="after")
    def _check_kind(self) -> StageSpec:
        if self.kind == "judge":
            if self.from_ is None:
                raise ValueError(f'stage {self.name!r}: a judge stage scores the examples of an earlier stage; '
                                 'name it with from = "STAGE"')
            if self.target is not None:
                raise ValueError(f"stage {self.name!r}: a judge stage scores every valid example of its source "
                                 "once and has no target of its own; remove target")
        elif self.threshold is not None:
            raise ValueError(f'stage {self.name!r}: threshold applies to a judge stage (kind = "judge") only')
        return self


class JobSpec(_Strict):
    """A job: what to generate, how, how much, and for how much money."""

    name: str = Field(pattern=f"^{JOB_NAME}$")
    description: str = ""
    model: str
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"] = CHAT
    format: Literal["sharegpt", "alpaca", "chatml"] = "sharegpt"
    target: int = Field(gt=0)
    examples_per_request: int = Field(10, gt=0, le=50)
    overgeneration: Decimal = Field(Decimal("1.1"), ge=1, le=10)
    budget_usd: Decimal | None = Field(None, ge=0)
    backend: Literal["embedded", "openai", "azure"] | None = None
    deployment: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                   description="the Azure deployment that runs `model` (azure backend only)")
    free: bool = False
    max_attempts: int = Field(3, ge=1, le=20)
    retry_invalid: bool = True
    max_top_ups: int = Field(2, ge=0, le=10)
    prompt: PromptSpec = Field(default_factory=lambda: PromptSpec.model_validate({}))
    axes: AxesSpec = Field(default_factory=AxesSpec)
    validate_: ValidateSpec = Field(default_factory=lambda: ValidateSpec.model_validate({}), alias="validate")
    limits: LimitsSpec = Field(default_factory=lambda: LimitsSpec.model_validate({}))
    embeddings: EmbeddingsSpec | None = None
    stages: list[StageSpec] = Field(default_factory=list)

    _dir: Path = PrivateAttr(default=Path("."))
    _seeds: tuple[dict[str, Any], ...] = PrivateAttr(default=())
    _templates: dict[str, str] = PrivateAttr(default_factory=dict)
    _hash: str = PrivateAttr(default="")
    _price_file: PriceFile | None = PrivateAttr(default=None)
    _detached: bool = PrivateAttr(default=False)
    _check_sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _local: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _embedding_defaults(cls, data: Any) -> Any:
        """An embeddings request embeds one text, and an answer is hardly ever unusable: one example a request,
        no overgeneration and no seeds, unless the job says otherwise."""
        if not isinstance(data, dict) or data.get("endpoint") != EMBEDDINGS:
            return data
        prompt = data.get("prompt", {})
        if isinstance(prompt, dict) and "seeds" not in prompt:
            prompt = {"seeds_per_request": 0, **prompt}
        return {"examples_per_request": 1, "overgeneration": 1, **data, "prompt": prompt}

    @model_validator(mode="after")
    def _check_embeddings(self, info: ValidationInfo) -> JobSpec:
        if self.endpoint != EMBEDDINGS:
            if self.embeddings is not None:
                raise ValueError('[embeddings] applies to endpoint = "/v1/embeddings" only')
            return self
        chat_only = [] if (info.context or {}).get("recorded") else self._chat_only_keys()
        if chat_only:
            raise ValueError(f"{chat_only[0]} applies to chat requests; an embeddings job sends the rendered "
                             "template as its input, so remove it")
        if self.examples_per_request != 1 or any(s.examples_per_request not in (None, 1) for s in self.stages):
            raise ValueError("an embeddings request embeds one text and yields one vector: examples_per_request "
                             "must be 1 (or left out)")
        dimensions = self.embeddings.dimensions if self.embeddings is not None else None
        problem = dimensions_problem(self.model, dimensions) if dimensions is not None else None
        if problem is not None:
            raise ValueError(f"embeddings.dimensions: {problem}")
        return self

    def _chat_only_keys(self) -> list[str]:
        """The settings of this job, as written, that only a chat request uses."""
        keys = [f"prompt.{key}" for key in ("system", "temperature", "max_tokens", "structured_output")
                if key in self.prompt.model_fields_set]
        keys += [f"validate.{key}" for key in ("response_patterns", "role_order", "min_turns", "max_turns",
                                               "reject_seed_copies", "near_dedupe", "near_dedupe_ngrams",
                                               "examples_keys")
                 if key in self.validate_.model_fields_set]
        for stage in self.stages:
            keys += [f"stages.{stage.name}.{key}" for key in ("system", "temperature", "max_tokens")
                     if key in stage.model_fields_set]
        return keys

    @model_validator(mode="after")
    def _check_stages(self) -> JobSpec:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("two stages have the same name")
        judges = {s.name for s in self.stages if s.kind == "judge"}
        for position, stage in enumerate(self.stages):
            if stage.from_ is not None and stage.from_ not in names[:position]:
                raise ValueError(
                    f"stage {stage.name!r}: from = {stage.from_!r} is not an earlier stage "
                    f"(earlier: {', '.join(names[:position]) or 'none'})"
                )
            if stage.from_ in judges:
                raise ValueError(f"stage {stage.name!r}: from = {stage.from_!r} names a judge stage, which makes "
                                 "no examples; name the stage it judges")
            if stage.kind == "judge" and self.endpoint == EMBEDDINGS:
                raise ValueError(f"stage {stage.name!r}: an embeddings job has no chat answers to judge")
        for position, stage in enumerate(self.stages):
            if stage.kind != "judge":
                continue
            others = [s.name for s in self.stages[:position] if s.from_ == stage.from_]
            if others:
                # what they took of the source before the judge, and its top-ups after it, would not agree
                raise ValueError(f"stage {others[0]!r} takes the examples of {stage.from_!r} before its judge "
                                 f"{stage.name!r} has scored them; put it after the judge")
            if stage.template is None and self.prompt.template is None:
                raise ValueError(f"stage {stage.name!r} has no template and prompt.template is not set")
        if not self.stages and self.prompt.template is None:
            raise ValueError("prompt.template is required (or give each [[stages]] a template)")
        return self

    @classmethod
    def recorded(cls, text: str) -> JobSpec:
        """The spec as a ledger recorded it (`jobs.spec_json`), checked when the job was registered. Every default
        is written out in it, so what an embeddings job must leave out unset is not asked again."""
        return cls.model_validate_json(text, context={"recorded": True})

    def loaded(self, job_dir: Path, seeds: tuple[dict[str, Any], ...], templates: dict[str, str],
               seeds_bytes: bytes, price_file: PriceFile | None = None) -> JobSpec:
        """This spec with the content of its job directory attached (the loader's last step)."""
        self._dir = job_dir
        self._seeds = seeds
        self._templates = templates
        self._hash = spec_digest(self, templates, seeds_bytes)
        self._price_file = price_file
        return self

    def restored(self, job_dir: Path, spec_hash: str, seeds: tuple[dict[str, Any], ...],
                 price_file: PriceFile | None, check_sources: dict[str, str] | None = None) -> JobSpec:
        """This spec as a ledger kept it, for a job whose directory is gone: its hash, seeds and price file, enough
        to judge, price and export what comes back, but no templates, so nothing new can be rendered."""
        self._dir = job_dir
        self._seeds = seeds
        self._hash = spec_hash
        self._price_file = price_file
        self._check_sources = dict(check_sources or {})
        self._detached = True
        return self

    @property
    def dataset_format(self) -> str:
        """The format of the job's dataset: its chat format, or `embeddings` for an embeddings job."""
        return EMBEDDINGS_FORMAT if self.endpoint == EMBEDDINGS else self.format

    @property
    def vector_options(self) -> dict[str, Any]:
        """What every embeddings request adds to its body (`dimensions`, `encoding_format`), as set."""
        if self.embeddings is None:
            return {}
        return self.embeddings.model_dump(exclude_none=True)

    # --- loaded content
    # -------------------------------------------------------------------------------------------
    @property
    def job_dir(self) -> Path:
        """The directory the spec was loaded from."""
        return self._dir

    @property
    def seeds(self) -> tuple[dict[str, Any], ...]:
        """The seed examples, validated against the format, as plain JSON-ready dicts."""
        return self._seeds

    @property
    def spec_hash(self) -> str:
        """sha256 (hex) of everything that shapes the requests: settings, templates and seeds.

        Description, budget, backend (and whether it is free), validation rules, attempts and shard limits are left
        out, so changing
        them keeps the custom_ids of a job stable. The turn bounds of [validate] also bound the turns of the
        json_schema a request sends (see `formats.response_schema`); they stay out all the same, as validation rules
        may change while a job runs: requests compiled after a change carry the new bounds.
        """
        return self._hash

    @property
    def check_sources(self) -> dict[str, str]:
        """Of a spec restored from the ledger: the text of each file its rule hooks name, as the ledger kept it."""
        return self._check_sources

    @property
    def price_file(self) -> PriceFile | None:
        """The job's own price file (`prices.toml` in its directory) as it was read, or None."""
        return self._price_file

    def model_price(self) -> ModelPrice:
        """The price the job's requests are charged at: its price file, then batchgen's table and genai-prices, or
        nothing on a backend the job marks free or a server on this machine (see `recipe.pricing.get_price`)."""
        return get_price(self.model, price_file=self._price_file, free=self.free, local=self._local)

    def served_locally(self, local: bool) -> JobSpec:
        """Say whether the job's backend is a server on this machine (a loopback base URL, not the embedded
        emulator), whose tokens are free unless the job's price file names the model; returns the spec."""
        self._local = local
        return self

    @property
    def local(self) -> bool:
        """Whether the job runs on a server on this machine (see `served_locally`)."""
        return self._local

    @property
    def detached(self) -> bool:
        """Whether the spec was restored without its job directory (see `restored`)."""
        return self._detached

    def require_job_dir(self, work: str) -> None:
        """JobDirMissing unless the job directory, which `work` needs (its templates), is there."""
        if self._detached or not (self._dir / JOB_FILE).is_file():
            raise JobDirMissing(self.name, self._dir, work)

    def template_text(self, stage: ResolvedStage) -> str:
        return self._templates[stage.template]

    def resolved_stages(self) -> list[ResolvedStage]:
        """Every stage with job-level defaults filled in; a job without [[stages]] has one stage, "main"."""
        stages = self.stages or [StageSpec.model_validate({"name": "main"})]
        return [self._resolve(stage) for stage in stages]

    def stage(self, name: str | None = None) -> ResolvedStage:
        """A stage by name (default: the first)."""
        stages = self.resolved_stages()
        if name is None:
            return stages[0]
        for stage in stages:
            if stage.name == name:
                return stage
        raise SpecError(
            f"Job {self.name!r} has no stage {name!r}; stages: {', '.join(s.name for s in stages)}"
        )

    def _resolve(self, stage: StageSpec) -> ResolvedStage:
        temps = stage.temperature if stage.temperature is not None else self.prompt.temperature
        temperatures = tuple(float(t) for t in (temps if isinstance(temps, list) else [temps]))
        judge = stage.kind == "judge"
        # A judge stage's target is its source's: it scores what that stage asked for, once.
        source = next((s for s in self.stages if s.name == stage.from_), None) if judge else None
        return ResolvedStage(
            name=stage.name,
            template=stage.template or self.prompt.template or "",
            source=stage.from_,
            target=(source.target if source is not None else None) or stage.target or self.target,
            examples_per_request=stage.examples_per_request or self.examples_per_request,
            seeds_per_request=self.prompt.seeds_per_request if stage.from_ is None else 0,
            temperatures=temperatures,
            max_tokens=0 if self.endpoint == EMBEDDINGS else stage.max_tokens or self.prompt.max_tokens,
            system=self.prompt.system if stage.system is None else stage.system,
            kind=stage.kind,
            threshold=stage.threshold if judge else None,
        )


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with every setting decided (an embeddings stage has max_tokens 0: its answers have no output)."""

    name: str
    template: str
    source: str | None
    target: int
    examples_per_request: int
    seeds_per_request: int
    temperatures: tuple[float, ...]
    max_tokens: int
    system: str
    kind: str = "generate"  # or "judge": scores the valid examples of `source` (see the module docstring)
    threshold: int | None = None  # a judge stage's: examples scored below it are rejected

    @property
    def judges(self) -> bool:
        """Whether this is a judge stage (it scores its source's examples and makes none)."""
        return self.kind == "judge"


def spec_digest(spec: JobSpec, templates: dict[str, str], seeds_bytes: bytes) -> str:
    """The spec hash (see `JobSpec.spec_hash`)."""
    identity = spec.model_dump(
        mode="json",
        by_alias=True,
        exclude={"description", "budget_usd", "backend", "deployment", "free", "validate_", "max_attempts",
                 "retry_invalid", "max_top_ups", "limits"},
    )
    if identity.get("embeddings") is None:
        del identity["embeddings"]  # jobs without embeddings options keep the hash they had before there were any
    for stage in identity["stages"]:  # and stages that judge nothing, the hash they had before there were judges
        if stage["kind"] == "generate" and stage["threshold"] is None:
            del stage["kind"], stage["threshold"]
    payload = json.dumps(
        {"spec": identity, "templates": templates, "seeds": hashlib.sha256(seeds_bytes).hexdigest()},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


__all__ = [
    "JobSpec",
    "PromptSpec",
    "AxesSpec",
    "ValidateSpec",
    "LimitsSpec",
    "EmbeddingsSpec",
    "StageSpec",
    "ResolvedStage",
    "spec_digest",
    "ValidationError",
    "JOB_FILE",
    "JOB_NAME",
    "CHAT",
    "EMBEDDINGS",
    "JUDGE_SCALE",
]
