"""Rendering one variant into one Batch API request line, with its exact input token count.

Template variables (Jinja2, StrictUndefined, so a misspelt name is an error, not an empty string):

    count          examples this request asks for (the stage's examples_per_request)
    seeds          the seed examples of this request (list of dicts in the job's format)
    seed_examples  the same as indented JSON text (the lesson's {seed_examples})
    <axis name>    the value of each axis for this request, e.g. operation, style, include_errors
    cell           all axis values as a dict
    job, description, stage, temperature
    examples, example, examples_json, example_json   (stages with `from`: the source examples to evolve;
                   of a judge stage: the examples to score, `count` of them, and no axis values)
    index, attempt the variant index and attempt (they make every prompt unique)

An embeddings request's body is `{"model", "input": <the rendered template>}`, plus the job's `dimensions` and
`encoding_format` when it sets them; its input tokens are the text's tokens.

Model-family rules for a chat request's body (decided by the model name):

- `max_completion_tokens` for o-series (o1, o3, o4 ...) and gpt-5 and later (gpt-5*, gpt-6* ...), which reject
  `max_tokens`; `max_tokens` for gpt-4o, gpt-4.1, gpt-4 and gpt-3.5, which the Batch API documents with it.
- `temperature` is omitted for reasoning models (o-series, gpt-5 and later), which reject any value but the
  default; the `*-chat*` variants (gpt-5-chat-latest) are not reasoning models and keep it.

Token counts are exact and fast because repeated parts are counted once (`PartCounter`). A message's text is
cut into parts at line starts where tiktoken's pre-tokenizer (o200k_base and cl100k_base) must also split:
after a newline, before a line whose first character after spaces or tabs is neither whitespace nor '/'. No
pre-token can cross such a boundary (a newline-ending pre-token extends only over further newlines, whitespace
that reaches a newline, or '/'), so the text's count is the sum of its parts' counts, and each distinct part
(a seed's line, a template line) is tokenized once. Tests check this against tiktoken on compiled requests and
on random text. Each distinct body (same seeds, axis values, temperature) is also rendered only once.

A plan also asks each chat request for its prompt as the provider's prompt cache sees it (`Renderer(prefixes=
True)`, `RenderedRequest.prefix`): the response format (a prefix of the system message), then each message's
head and its parts in order, then the reply priming, each with its exact tokens. Two requests share a prefix of
whole parts when their first parts are equal, and its tokens are the sum of theirs (`batchgen.recipe.prefix`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import orjson
from jinja2 import meta

from batchgen.errors import SpecError
from batchgen.recipe import formats
from batchgen.recipe.spec import CHAT, JobSpec, ResolvedStage
from batchgen.recipe.tokens import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, encoding_for_model, response_format_tokens
from batchgen.recipe.variants import Variant, VariantPlan

BASE_VARIABLES = frozenset(
    {
        "count",
        "seeds",
        "seed_examples",
        "cell",
        "job",
        "description",
        "stage",
        "temperature",
        "index",
        "attempt",
    }
)
SOURCE_VARIABLES = frozenset({"examples", "example", "examples_json", "example_json"})
MAX_CUSTOM_ID = 64
_CACHE_LIMIT = 1024
_PART_LIMIT = 200_000
_BOUNDARY = re.compile(r"\n(?=[ \t]*[^\s/])")


def is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 and later (except their *-chat* variants)."""
    name = model.removeprefix("ft:")
    if re.match(r"o\d", name):
        return True
    match = re.match(r"gpt-(\d+)", name)
    return bool(match and int(match.group(1)) >= 5 and "-chat" not in name)


def max_tokens_param(model: str) -> str:
    """`max_completion_tokens` for o-series and gpt-5+, `max_tokens` for older families."""
    name = model.removeprefix("ft:")
    match = re.match(r"gpt-(\d+)", name)
    return (
        "max_completion_tokens"
        if re.match(r"o\d", name) or (match and int(match.group(1)) >= 5)
        else "max_tokens"
    )


def custom_id(job: str, spec_hash: str, stage: str, index: int, attempt: int) -> str:
    """`<job>-<spec hash 8>-<stage>-<index>-a<attempt>`; the job name is cut so the id fits 64 characters."""
    rest = f"-{spec_hash[:8]}-{stage}-{index}-a{attempt}"
    return f"{job[: MAX_CUSTOM_ID - len(rest)]}{rest}"


def parse_custom_id(value: str) -> tuple[str, str, str, int, int]:
    """(job prefix, spec hash 8, stage, index, attempt) from a custom_id made by `custom_id`."""
    job, short_hash, stage, index, attempt = value.rsplit("-", 4)
    return job, short_hash, stage, int(index), int(attempt.removeprefix("a"))


# One piece of a prompt as the provider's prompt cache sees it, and its exact tokens (see the module docstring).
Chunk = tuple[Hashable, int]


@dataclass(frozen=True)
class RenderedRequest:
    """One request line and what the ledger needs to know about it (and, for a plan, its prompt's chunks)."""

    custom_id: str
    variant: Variant
    stage: str
    attempt: int
    input_tokens: int
    line: bytes
    prefix: tuple[Chunk, ...] | None = None


class PartCounter:
    """Exact token counts of texts made of repeated lines (see the module docstring); caches bounded."""

    def __init__(self, model: str):
        self._model = model
        self._encoder: Callable[[str], list[int]] | None = None  # loaded on first count: rendering alone needs none
        self._lines: dict[str, int] = {}  # part without its closing newline -> tokens of part + "\n"
        self._tails: dict[str, int] = {}  # the last part of a text (no newline after it) -> tokens

    def _load(self) -> Callable[[str], list[int]]:
        self._encoder = encoding_for_model(self._model).encode_ordinary
        return self._encoder

    def count(self, text: str) -> int:
        *parts, tail = _BOUNDARY.split(text)
        lines, encode = self._lines, self._encoder or self._load()
        if len(lines) >= _PART_LIMIT:
            lines.clear()
        total = 0
        for part in parts:
            n = lines.get(part)
            if n is None:
                n = lines[part] = len(encode(part + "\n"))
            total += n
        return total + self._tail(tail, encode)

    def _tail(self, tail: str, encode: Callable[[str], list[int]]) -> int:
        n = self._tails.get(tail)
        if n is None:
            if len(self._tails) >= _CACHE_LIMIT:
                self._tails.clear()
            n = self._tails[tail] = len(encode(tail))
        return n

    def parts(self, text: str) -> list[Chunk]:
        """The text's parts in order, each with its tokens (their sum is `count(text)`); the last part (no newline
        after it) is keyed apart from an equal line that has one."""
        *parts, tail = _BOUNDARY.split(text)
        lines, encode = self._lines, self._encoder or self._load()
        if len(lines) >= _PART_LIMIT:
            lines.clear()
        found: list[Chunk] = []
        for part in parts:
            n = lines.get(part)
            if n is None:
                n = lines[part] = len(encode(part + "\n"))
            found.append((part, n))
        found.append(((tail,), self._tail(tail, encode)))
        return found


class Renderer:
    """Renders the variants of one stage; keeps small caches of bodies and token counts."""

    def __init__(self, spec: JobSpec, stage: ResolvedStage, sources: Sequence[dict[str, Any]] | None = None, *,
                 prefixes: bool = False):
        spec.require_job_dir(f"rendering stage {stage.name!r}")
        self.spec, self.stage = spec, stage
        self.prefixes = prefixes  # also give each chat request its prompt's chunks (a plan's cache estimate)
        self.sources = list(sources) if sources is not None else None
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
            loader=jinja2.FileSystemLoader(str(spec.job_dir)),
        )
        self.template_name = stage.template
        try:
            self.template = env.get_template(stage.template)
            used = meta.find_undeclared_variables(env.parse(spec.template_text(stage)))
        except jinja2.TemplateError as error:
            raise template_error(spec, stage.template, error) from None
        self.used = used
        self.per_request = bool(used & {"index", "attempt"})
        self._bodies: dict[Any, tuple[bytes, int, tuple[Chunk, ...] | None]] = {}
        self._counter = PartCounter(spec.model)
        self._seeds = spec.seeds
        self._seed_blocks = [_indent(json.dumps(seed, indent=2, ensure_ascii=False)) for seed in spec.seeds]
        self._fixed = {
            "job": spec.name,
            "description": spec.description,
            "stage": stage.name,
            "count": stage.examples_per_request,
        }
        self._model, self._chat = spec.model, spec.endpoint == CHAT
        self._vector_options = spec.vector_options
        self._id_prefix = (spec.name, spec.spec_hash, stage.name)
        self._prefix = b'","method":"POST","url":' + orjson.dumps(spec.endpoint) + b',"body":'
        self._temperature = not is_reasoning_model(spec.model)
        self._max_param = max_tokens_param(spec.model)
        self._response_format = request_response_format(spec, stage)
        self._format_tokens: int | None = None  # counted on first use: loading a spec must not load the tokenizer
        self._format_key = ("#format", orjson.dumps(self._response_format))

    def context(self, variant: Variant, attempt: int) -> dict[str, Any]:
        seeds = [self._seeds[i] for i in variant.seeds]
        seed_examples = (
            "[\n" + ",\n".join(self._seed_blocks[i] for i in variant.seeds) + "\n]" if seeds else "[]"
        )
        ctx: dict[str, Any] = {
            **self._fixed,
            "temperature": variant.temperature,
            "seeds": seeds,
            "seed_examples": seed_examples,
            "cell": dict(variant.cell),
            "index": variant.index,
            "attempt": attempt,
            **variant.cell,
        }
        if self.stage.source is not None:
            examples = [self.sources[i] for i in variant.sources] if self.sources else []
            if self.stage.judges:
                ctx["count"] = len(examples)  # the last request of a judge stage may show fewer
            ctx.update(
                examples=examples,
                example=examples[0] if examples else {},
                examples_json=json.dumps(examples, indent=2, ensure_ascii=False),
                example_json=json.dumps(examples[0] if examples else {}, indent=2, ensure_ascii=False),
            )
        return ctx

    def render_text(self, variant: Variant, attempt: int = 1) -> str:
        """The rendered user message (or embeddings input)."""
        try:
            return self.template.render(self.context(variant, attempt))
        except jinja2.TemplateError as error:
            raise template_error(self.spec, self.template_name, error, variant.index) from None
        except Exception as error:  # noqa: BLE001 - a template can raise anything Python can ({{ 1/0 }})
            raise template_error(self.spec, self.template_name, error, variant.index) from None

    def body(self, variant: Variant, attempt: int = 1) -> tuple[bytes, int]:
        """(body as compact JSON bytes, exact input tokens) of a variant."""
        body, tokens, _ = self._rendered(variant, attempt)
        return body, tokens

    def _rendered(self, variant: Variant, attempt: int) -> tuple[bytes, int, tuple[Chunk, ...] | None]:
        key: Any = (variant.seeds, variant.cell_key, variant.temperature, variant.sources)
        if self.per_request:
            key = (key, variant.index, attempt)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        text = self.render_text(variant, attempt)
        result: tuple[bytes, int, tuple[Chunk, ...] | None]
        if self._chat:
            result = self._chat_body(text, variant.temperature)
        else:
            result = (orjson.dumps({"model": self._model, "input": text, **self._vector_options}),
                      self._counter.count(text), None)
        if len(self._bodies) >= _CACHE_LIMIT:
            self._bodies.clear()
        self._bodies[key] = result
        return result

    def _chat_body(self, text: str, temperature: float) -> tuple[bytes, int, tuple[Chunk, ...] | None]:
        messages = [{"role": "system", "content": self.stage.system}] if self.stage.system else []
        messages.append({"role": "user", "content": text})
        body: dict[str, Any] = {"model": self._model, "messages": messages}
        if self._temperature:
            body["temperature"] = temperature
        body[self._max_param] = self.stage.max_tokens
        if self._response_format is not None:
            body["response_format"] = self._response_format
        if self._format_tokens is None:
            self._format_tokens = response_format_tokens(self._response_format, self._model)
        if self.prefixes:
            chunks = self._chunks(messages)
            return orjson.dumps(body), sum(n for _, n in chunks), chunks
        tokens = REPLY_PRIMING_TOKENS + self._format_tokens + sum(self._message_tokens(m["role"], m["content"])
                                                                  for m in messages)
        return orjson.dumps(body), tokens, None

    def _chunks(self, messages: list[dict[str, str]]) -> tuple[Chunk, ...]:
        """The prompt's chunks in the order the provider's cache reads it (see the module docstring)."""
        found: list[Chunk] = []
        if self._format_tokens:
            found.append((self._format_key, self._format_tokens))
        for message in messages:
            found.append((("#message", message["role"]), TOKENS_PER_MESSAGE + self._counter.count(message["role"])))
            found.extend(self._counter.parts(message["content"]))
        found.append((("#reply",), REPLY_PRIMING_TOKENS))
        return tuple(found)

    def _message_tokens(self, role: str, content: str) -> int:
        """Tokens of one chat message: the per-message overhead, its role and its content."""
        return TOKENS_PER_MESSAGE + self._counter.count(role) + self._counter.count(content)

    def request(self, variant: Variant, attempt: int = 1) -> RenderedRequest:
        """The full request line of a variant."""
        cid = custom_id(*self._id_prefix, variant.index, attempt)
        body, tokens, chunks = self._rendered(variant, attempt)
        line = b'{"custom_id":"' + cid.encode() + self._prefix + body + b"}\n"
        return RenderedRequest(cid, variant, self.stage.name, attempt, tokens, line, chunks)


def request_response_format(spec: JobSpec, stage: ResolvedStage | None = None) -> dict[str, Any] | None:
    """The `response_format` every chat request of the job (or of `stage`) carries: examples, or a judge stage's
    scores (None: structured_output = "none")."""
    if spec.endpoint != CHAT or spec.prompt.structured_output == "none":
        return None
    if stage is not None and stage.judges:
        return formats.judgments_format(spec.prompt.structured_output)
    if spec.model.startswith("ft:"):  # OpenAI's strict mode refuses minItems/maxItems for a fine-tuned model
        return formats.response_format(spec.format, spec.prompt.structured_output)
    v = spec.validate_
    return formats.response_format(spec.format, spec.prompt.structured_output,
                                   (stage or spec.stage()).examples_per_request, (v.min_turns, v.max_turns))


def _indent(text: str) -> str:
    """Indent every line by two spaces, as json.dumps(list, indent=2) does for the list's items."""
    return "  " + text.replace("\n", "\n  ")


def stand_in_sources(spec: JobSpec) -> list[dict[str, Any]]:
    """Examples to render a `from` stage before its sources exist: the seeds, or one neutral example."""
    if spec.seeds:
        return list(spec.seeds)
    turns = [
        formats.Turn(role="user", content="example request"),
        formats.Turn(role="assistant", content="example answer"),
    ]
    return [formats.from_turns(turns, spec.format)]


def check_templates(spec: JobSpec) -> None:
    """Render the first request of every stage; a SpecError names the template line of an unknown variable."""
    for stage in spec.resolved_stages():
        allowed = BASE_VARIABLES | (set() if stage.judges else set(spec.axes.values))
        if stage.source is not None:
            allowed |= SOURCE_VARIABLES
        clash = set(spec.axes.values) & (BASE_VARIABLES | SOURCE_VARIABLES)
        if clash:
            raise SpecError(
                f"axes.values: axis name {sorted(clash)[0]!r} is reserved for a template variable; "
                "rename the axis"
            )
        sources = stand_in_sources(spec) if stage.source is not None else None
        renderer = Renderer(spec, stage, sources)
        unknown = sorted(renderer.used - allowed)
        if unknown:
            raise _unknown_variable(spec, stage, unknown[0], allowed)
        plan = VariantPlan(spec, stage, len(sources) if sources else None)
        text = renderer.render_text(plan.variant(0))
        if spec.prompt.structured_output == "json_object" and "json" not in (text + stage.system).lower():
            raise SpecError(
                f'{spec.job_dir / stage.template}: structured_output = "json_object" needs the word '
                "JSON in the prompt (the API rejects the request otherwise)"
            )


def _unknown_variable(
    spec: JobSpec, stage: ResolvedStage, name: str, allowed: set[str] | frozenset[str]
) -> SpecError:
    import difflib

    path = spec.job_dir / stage.template
    text = spec.template_text(stage)
    pattern = re.compile(r"\{[{%][^}]*\b" + re.escape(name) + r"\b")
    line = next((n for n, row in enumerate(text.splitlines(), 1) if pattern.search(row)), None)
    hint = difflib.get_close_matches(name, sorted(allowed), n=1)
    where = f" line {line}" if line else ""
    extra = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(sorted(allowed))}"
    if name in SOURCE_VARIABLES:
        extra = f"; '{name}' exists only in a stage with from = \"...\""
    return SpecError(f"{path}{where}: template variable '{name}' is not defined{extra}")


def template_error(spec: JobSpec, template: str, error: Exception, index: int | None = None) -> SpecError:
    """A SpecError naming the template file and line (and the request, when rendering one failed)."""
    path = spec.job_dir / template
    if isinstance(error, jinja2.TemplateSyntaxError):
        return SpecError(f"{path} line {error.lineno}: template syntax error: {error.message}")
    line = _template_line(error, str(path))
    request = f" (rendering request {index})" if index is not None else ""
    what = str(error) if isinstance(error, jinja2.TemplateError) else f"{type(error).__name__}: {error}"
    return SpecError(f"{path}{f' line {line}' if line else ''}{request}: {what}")


def _template_line(error: BaseException, filename: str) -> int | None:
    import traceback

    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == filename:
            return frame.lineno
    return None
