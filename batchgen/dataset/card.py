"""The dataset card written next to every export: what a reader of the dataset needs to know to use, share or
publish it as it is, in the Hugging Face convention (a README.md whose YAML front matter the Hub reads).

Where it goes (`card_path`): `README.md` in the dataset's folder, the file the Hub shows and whose `configs`
`datasets.load_dataset(folder)` follows, unless that README.md is something else (a card of another dataset in
the same folder, or a file batchgen did not write) or the folder is shared by design (the workspace's datasets/,
where every job's dataset goes); then `<dataset name>.README.md` (`task_api.sharegpt.README.md` for
`task_api.sharegpt.jsonl`). So a dataset written into a folder of its own gets the Hub's README.md, every dataset
in a shared folder a card of its own, and no one's own README.md is overwritten.

What it says: the recipe (model, format, seeds, axes, stages), counts per stage and per cell (requests, examples
generated, valid, exported), the quality figures (validation, what the export left out and why, the fine-tuning
check of a ChatML file), the cost, and the provenance fields with where they are.

Examples are untrusted model output, and so is anything that quotes them (a rejection reason): no text from the
ledger or the job reaches the card unescaped. YAML scalars are double-quoted with every character outside printable
ASCII escaped; markdown text has every character with a markdown meaning backslash-escaped and line breaks
flattened; the sample example is JSON with control and format characters escaped, in a code fence longer than any
run of backticks inside it. The card holds no clock time, so the same ledger gives the same card.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchgen._version import __version__
from batchgen.dataset.export import ExportResult, cell_key
from batchgen.dataset.reasons import Summary
from batchgen.ledger.reports import CellCount
from batchgen.money import format_usd
from batchgen.recipe.formats import EMBEDDINGS_FORMAT
from batchgen.recipe.spec import JobSpec

CARD_NAME = "README.md"
CARD_SUFFIX = ".README.md"
MARKER = "batchgen:"  # the front matter's own section: a README.md that has it for this file is this file's card
_HEAD_BYTES = 8192
SAMPLES = 5  # examples left out, shown with their reason
VECTOR_HEAD = 4  # numbers of an embedding the sample shows
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~&$])")  # what has a meaning anywhere in a line
_MD_LINE_START = re.compile(r"^(\d+)([.)])|^([-=])")  # what has one only at a line's start
_BREAKS = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]+")
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
PROVENANCE_FIELDS = [
    ("job", "the batchgen job that made the example"),
    ("stage", "its stage in the job"),
    ("custom_id", "the Batch API request it answers (`<job>-<spec hash 8>-<stage>-<index>-a<attempt>`)"),
    ("position", "its place among the examples of that answer"),
    ("attempt", "the attempt of the request that gave it"),
    ("batch_id", "the Batch API batch of that request"),
    ("model", "the model that wrote it"),
    ("cell", "the values of the diversity axes its request asked for"),
    ("content_hash", "the hash of its content that exact deduplication compares"),
]


@dataclass(frozen=True)
class CardFacts:
    """What the ledger knows about the job, beyond the records an export writes.

    `figures` are more quality figures as (label, value), plain text, shown in the quality section as they
    come: the place for figures that later checks add (near-duplicates, review, a judge stage).
    """

    spec: JobSpec
    backend: str | None
    cells: Sequence[CellCount]
    quality: Summary
    spent_usd: Decimal
    tokens: Mapping[str, int]
    figures: Sequence[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetCard:
    """The card of one job's export: `export_dataset` asks it where the card goes and, once the examples are
    written, for its text, and writes it with the dataset."""

    facts: CardFacts
    shared_folder: bool = False  # the dataset's folder holds other datasets by design (the workspace's datasets/)

    def path_for(self, dataset: Path) -> Path:
        return card_path(dataset, self.shared_folder)

    def render(self, result: ExportResult) -> str:
        return render_card(self.facts, result)


def card_path(dataset: Path, shared_folder: bool = False) -> Path:
    """Where the card of `dataset` goes: README.md beside it when that is free or already this dataset's card,
    else (and always in a shared folder) `<name>.README.md`, the name without .jsonl."""
    readme = dataset.with_name(CARD_NAME)
    if not shared_folder and (not readme.exists() or card_of(readme) == dataset.name):
        return readme
    return dataset.with_name(dataset.name.removesuffix(".jsonl") + CARD_SUFFIX)


def card_of(readme: Path) -> str | None:
    """The dataset file a README.md is batchgen's card of, or None (not a card, or not readable)."""
    try:
        with open(readme, "rb") as handle:
            head = handle.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = head.split("\n")
    if not lines or lines[0] != "---":
        return None
    for number, line in enumerate(lines[1:-1], start=1):
        if line == "---":
            return None
        if line == MARKER and lines[number + 1].startswith("  dataset: "):
            return _unquote(lines[number + 1].removeprefix("  dataset: "))
    return None


def render_card(facts: CardFacts, result: ExportResult) -> str:
    """The card of the dataset `result` describes, written from `facts`."""
    parts = [_front_matter(facts, result), _intro(facts, result), _files(result), _recipe(facts),
             _counts(facts, result), _quality(facts, result), _cost(facts, result), _provenance(result),
             _sample(result)]
    return "\n".join(part for part in parts if part)


# -- the sections ------------------------------------------------------------------------------------------------


def _front_matter(facts: CardFacts, result: ExportResult) -> str:
    spec, name = facts.spec, result.path.name
    size = next((label for bound, label in _SIZES if result.written < bound), "n>100M")
    task = "feature-extraction" if result.format == EMBEDDINGS_FORMAT else "text-generation"
    lines = ["---", f"pretty_name: {_yaml(spec.name)}", "tags:", f"- {_yaml('synthetic')}", f"- {_yaml('batchgen')}",
             "task_categories:", f"- {_yaml(task)}", "size_categories:", f"- {_yaml(size)}", "configs:",
             f"- config_name: {_yaml('default')}", "  data_files:", f"  - split: {_yaml('train')}",
             f"    path: {_yaml(name)}", MARKER, f"  dataset: {_yaml(name)}", f"  job: {_yaml(spec.name)}",
             f"  format: {_yaml(result.format)}", f"  model: {_yaml(spec.model)}",
             f"  spec_hash: {_yaml(spec.spec_hash)}", f"  examples: {result.written}",
             f"  sha256: {_yaml(result.sha256)}", f"  provenance: {_yaml(result.provenance)}",
             f"  version: {_yaml(__version__)}", "---", ""]
    return "\n".join(lines)


def _intro(facts: CardFacts, result: ExportResult) -> str:
    spec = facts.spec
    lines = [f"# {_md(spec.name)}", ""]
    if spec.description:
        lines += [_md_line(spec.description), ""]
    lines.append(f"{_plural(result.written, 'synthetic example')} in {_md(result.format)} format, generated by "
                 f"{_md(spec.model)} through the Batch API with batchgen {_md(__version__)} from the job "
                 f"{_md(spec.name)} (spec hash {_md(spec.spec_hash)}).")
    if facts.backend == "embedded":
        lines += ["", "**Simulated.** This dataset was made on batchgen's offline emulator of the Batch API: its "
                      f"answers were built from the seed examples by a simulator, not written by {_md(spec.model)}, "
                      "and it cost nothing. It shows what the job makes; it is not training data."]
    return "\n".join([*lines, ""])


def _files(result: ExportResult) -> str:
    rows = [[_md(result.path.name), f"{_plural(result.written, 'example')}, one JSON object a line", result.sha256]]
    if result.sidecar_path is not None:
        rows.append([_md(result.sidecar_path.name), "the provenance of each example, line by line",
                     result.sidecar_sha256 or ""])
    name = json.dumps(result.path.name)
    return "\n".join(["## Files", "", *_table(["file", "holds", "sha256"], rows), "",
                      "```python", "from datasets import load_dataset", "",
                      f"dataset = load_dataset(\"json\", data_files={name}, split=\"train\")", "```", ""])


def _recipe(facts: CardFacts) -> str:
    spec = facts.spec
    rows = [["model", _md(spec.model)], ["endpoint", _md(spec.endpoint)], ["job's format", _md(spec.dataset_format)],
            ["seeds", f"{len(spec.seeds):,} examples ({_md(spec.prompt.seeds or 'none')}), "
                      f"{spec.prompt.seeds_per_request} a request"],
            ["backend", _md(facts.backend or "not recorded")]]
    if spec.endpoint != "/v1/embeddings":
        rows.append(["structured output", _md(spec.prompt.structured_output)])
    if spec.axes.values:
        axes = "; ".join(f"{_md(name)}: {', '.join(_md(_text(v)) for v in values)}"
                         for name, values in spec.axes.values.items())
        rows.append(["axes", f"{_md(spec.axes.strategy)}: {axes}"])
    stages = [[_md(s.name), _md(s.source or "") + (f" (judge, threshold {s.threshold})" if s.judges else ""),
               _md(s.template), f"{s.target:,}", str(s.examples_per_request),
               ", ".join(_md(_text(t)) for t in s.temperatures), f"{s.max_tokens:,}"]
              for s in spec.resolved_stages()]
    return "\n".join(["## Recipe", "", *_table(["setting", "value"], rows), "",
                      *_table(["stage", "from", "template", "target", "examples a request", "temperature",
                               "max_tokens"], stages), ""])


def _counts(facts: CardFacts, result: ExportResult) -> str:
    exported = result.exported
    stages: dict[str, list[int]] = {}
    rows = []
    for row in facts.cells:
        key = (row.stage, cell_key(row.cell))
        rows.append([_md(row.stage), _md(_cell_text(row.cell, facts.spec)), f"{row.requests:,}", f"{row.generated:,}",
                     f"{row.valid:,}", f"{exported.get(key, 0):,}"])
        total = stages.setdefault(row.stage, [0, 0, 0])
        for n, value in enumerate((row.requests, row.generated, row.valid)):
            total[n] += value
    targets = {s.name: s.target for s in facts.spec.resolved_stages()}
    per_stage = [[_md(stage), f"{targets.get(stage, 0):,}", *(f"{n:,}" for n in total),
                  f"{sum(n for (s, _), n in exported.items() if s == stage):,}"] for stage, total in stages.items()]
    head = ["requests", "generated", "valid", "exported"]
    return "\n".join(["## Counts", "", "Requests count each variant once, however many attempts it took; an answer "
                      "holds several examples.", "", *_table(["stage", "target", *head], per_stage), "",
                      *_table(["stage", "cell", *head], rows), ""])


def _quality(facts: CardFacts, result: ExportResult) -> str:
    quality = facts.quality
    share = f" ({Decimal(100 * quality.valid) / quality.total:.1f} %)" if quality.total else ""
    checks = ("as vectors of the model's size, of finite numbers, and for inputs embedded twice"
              if facts.spec.endpoint == "/v1/embeddings" else
              "for schema, role order, empty turns, response patterns, duplicates and copies of seeds")
    lines = ["## Quality", "", f"- Valid: {quality.valid:,} of {quality.total:,} generated{share}, checked {checks}."]
    for label, value in facts.figures:
        lines.append(f"- {_md(label)}: {_md(value)}")
    reasons = sorted(quality.reasons.items(), key=lambda item: (-item[1], item[0]))
    lines += ["", *_table(["invalid reason", "count"], [[_md(r), f"{n:,}"] for r, n in reasons])] if reasons else []
    if result.skipped_total:
        lines += ["", f"Left out of this file: {result.skipped_total:,} example(s).", "",
                  *_table(["reason", "count"], [[_md(c), f"{n:,}"] for c, n in sorted(result.skipped.items())]),
                  "", *_table(["custom_id", "why (the first few)"],
                              [[_md(c), _md(r)] for c, r in result.samples[:SAMPLES]])]
    if result.training is not None:
        lines += ["", *_training(result.training.to_dict())]
    lines += ["", *(f"- Warning: {_md(w)}" for w in result.warnings)] if result.warnings else []
    return "\n".join([*lines, ""])


def _training(check: Mapping[str, Any]) -> list[str]:
    tokens = check["tokens"]
    context = (f"{check['context_tokens']:,} tokens ({_md(check['snapshot'])}; source: "
               f"{_md(check['context_source'])})" if check["context_tokens"] else "not known")
    return [f"Fine-tuning: checked as an OpenAI chat fine-tuning file for {_md(check['model'])}: documented keys "
            "only, an assistant message in every example, no empty message, and every example within the "
            f"model's training context: {context}. Tokens per example, counted as OpenAI's data-preparation script "
            f"counts them: min {tokens['min']:,}, median {tokens['median']:,}, max {tokens['max']:,}; "
            f"{tokens['total']:,} in all (before epochs). OpenAI takes at least {check['min_examples']} examples."]


def _cost(facts: CardFacts, result: ExportResult) -> str:
    spec, tokens = facts.spec, facts.tokens
    rows = [["spent (batch price, every stage and attempt)", format_usd(facts.spent_usd)],
            ["budget", format_usd(spec.budget_usd) if spec.budget_usd is not None else "none"],
            ["per exported example", format_usd(facts.spent_usd / result.written) if result.written else "-"],
            ["tokens", f"prompt {tokens.get('prompt', 0):,} (cached {tokens.get('cached', 0):,}), completion "
                       f"{tokens.get('completion', 0):,}"]]
    return "\n".join(["## Cost", "", *_table(["", ""], rows), ""])


def _provenance(result: ExportResult) -> str:
    where = {"inline": "in each line, under the key `_provenance`, after the example's own keys",
             "sidecar": f"in {_md(result.sidecar_path.name if result.sidecar_path else '')}, one object per "
                        "example line, with `line` (1-based) naming it",
             "none": "not written with this file (`batchgen export --provenance inline` or `sidecar` adds it)"}
    batches = sorted(result.batches)
    lines = ["## Provenance", "", f"Each example's provenance is {where.get(result.provenance, 'not written')}:", "",
             *_table(["field", "meaning"], [[f"`{name}`", meaning] for name, meaning in PROVENANCE_FIELDS]), "",
             f"Batches: {len(batches):,}" + (f" ({', '.join(_md(b) for b in batches)})." if batches else ".")]
    return "\n".join([*lines, ""])


def _sample(result: ExportResult) -> str:
    if result.first_example is None:
        return ""
    example = dict(result.first_example)
    vector = example.get("embedding")
    if isinstance(vector, list) and len(vector) > VECTOR_HEAD:
        example["embedding"] = [*vector[:VECTOR_HEAD], f"... {len(vector):,} numbers in all"]
    text = _safe_json(example)
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    return "\n".join(["## Example", "", "The first example of the file, as JSON:", "", f"{fence}json", text, fence,
                      ""])


# -- escaping ----------------------------------------------------------------------------------------------------


def _yaml(text: str) -> str:
    """`text` as a YAML double-quoted scalar of printable ASCII: whatever it holds, it stays one scalar."""
    out = []
    for char in text:
        code = ord(char)
        if char in "\\\"":
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _unquote(scalar: str) -> str | None:
    """The text of a scalar `_yaml` wrote (JSON reads its escapes, but for \\U, which `_yaml` writes only above
    the BMP); None for anything else."""
    if not (scalar.startswith('"') and scalar.endswith('"')):
        return None
    body = re.sub(r"\\U([0-9a-f]{8})", lambda m: chr(int(m.group(1), 16)), scalar[1:-1])
    try:
        value = json.loads(f'"{body}"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _md(text: str) -> str:
    """`text` as markdown text that renders as itself on one line inside a line: no markup, no HTML, no table
    cell break. (Backslash escapes are CommonMark's, for ASCII punctuation; `.` and `-` inside a line mean
    nothing and stay as they are.)"""
    flat = _BREAKS.sub(" ", text)
    flat = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in flat).strip()
    return _MD_SPECIAL.sub(r"\\\1", flat)


def _md_line(text: str) -> str:
    """`_md(text)` for text that starts a line: nor a list, a heading underline or a rule either."""
    return _MD_LINE_START.sub(lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1) else f"\\{m.group(3)}",
                              _md(text))


def _safe_json(example: Mapping[str, Any]) -> str:
    """Indented JSON of `example` with control, format and line-separator characters escaped as \\uXXXX (still
    the same JSON), so the text shows what it holds and nothing in it acts on the page."""
    text = json.dumps(example, ensure_ascii=False, indent=2)
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c != "\n" else c
                   for c in text)


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table; cells are escaped already."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _text(value: Any) -> str:
    """An axis value or temperature as the job wrote it (true, not True)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _cell_text(cell: Mapping[str, Any], spec: JobSpec) -> str:
    """The cell as `axis=value, ...`, in the order the job names its axes."""
    order = {name: n for n, name in enumerate(spec.axes.values)}
    names = sorted(cell, key=lambda name: (order.get(name, len(order)), name))
    return ", ".join(f"{name}={_text(cell[name])}" for name in names) or "(no axes)"
