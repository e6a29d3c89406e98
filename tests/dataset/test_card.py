"""The dataset card: where it goes, that it is written with its dataset or not at all, and that nothing in it
(the job's text, rejection reasons, the sample example: untrusted model output) can break its YAML or markdown."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from html import unescape
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from batchgen.dataset.card import CardFacts, DatasetCard, card_of, card_path, render_card
from batchgen.dataset.export import ExportRecord, ExportResult, Provenance, cell_key, export_dataset
from batchgen.dataset.reasons import Reason, Summary
from batchgen.ledger.reports import CellCount
from batchgen.recipe.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ('x</td></tr><script>alert(1)</script> | [link](javascript:alert(2)) <img src=x onerror=alert(3)> '
           '*bold* _em_ `code` &amp; $x$ ~~s~~ \\ \n# heading\n---\n- item\u2028ok\u202e\x00"quote" \'q\' ü 予算 🚀')
FENCES = "```json\n}\n```\n~~~\n</code></pre><b>out</b>"


def hostile_spec(tmp_path: Path):
    """The Task API job with a description and axis values that try to break out of the card."""
    job = tmp_path / "jobs" / "task_api"
    shutil.copytree(ROOT / "jobs" / "task_api", job)
    toml = job / "job.toml"
    quoted = json.dumps(HOSTILE, ensure_ascii=False)  # a TOML basic string too
    text = toml.read_text(encoding="utf-8").replace(
        'description = "Task API assistant: create, update, complete, delete and list tasks, with error cases"',
        f"description = {quoted}").replace('style = ["formal", "casual", "imperative", "question"]',
                                           f'style = [{quoted}, "casual"]')
    toml.write_text(text, encoding="utf-8")
    spec = load_spec(job)
    assert spec.description == HOSTILE and HOSTILE in spec.axes.values["style"]
    return spec


def facts_for(spec, cells: list[CellCount] | None = None) -> CardFacts:
    quality = Summary()
    quality.add(None, 9)
    quality.add(Reason("pattern", HOSTILE))
    return CardFacts(spec=spec, backend="openai", cells=cells or [], quality=quality,
                     spent_usd=Decimal("0.000123"), tokens={"prompt": 10, "cached": 0, "completion": 20},
                     figures=[("Near-duplicates", HOSTILE)])


def record(n: int, content: str = "fine", cell: dict[str, object] | None = None) -> ExportRecord:
    example = {"conversations": [{"from": "human", "value": f"question {n} {content}"},
                                 {"from": "gpt", "value": f"Created task: {content}"}]}
    return ExportRecord(example, "sharegpt", Provenance(
        custom_id=f"task_api-0000-main-{n}-a1", job="task_api", stage="main", position=0, attempt=1,
        batch_id="batch_1", model="gpt-4o-mini", cell=cell or {"style": HOSTILE, "operation": "create"},
        content_hash=f"{n:032x}"))


def front_matter(text: str) -> dict[str, object]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    loaded = yaml.safe_load(head)
    assert isinstance(loaded, dict)
    return loaded


def body_html(text: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(text[4:].partition("\n---\n")[2])


def test_hostile_text_stays_text(tmp_path: Path) -> None:
    spec = hostile_spec(tmp_path)
    cell = {"style": HOSTILE, "operation": "create"}
    target = tmp_path / "out" / 'train "x" ü.jsonl'
    records = [record(0, HOSTILE + FENCES, cell), record(1, cell=cell)]
    result = export_dataset(records, target, "chatml", provenance="inline",
                            card=DatasetCard(facts_for(spec, [CellCount("main", cell, 1, 2, 2)])))
    text = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert result.card_path == tmp_path / "out" / "README.md"
    assert "予算 🚀" in text and "\u202e" not in text and "\x00" not in text  # UTF-8; controls and overrides gone
    meta = front_matter(text)
    assert meta["pretty_name"] == "task_api" and meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": target.name}]}]
    assert meta["batchgen"]["dataset"] == target.name and meta["batchgen"]["examples"] == 2  # type: ignore[index]
    assert card_of(tmp_path / "out" / "README.md") == target.name
    html = body_html(text)
    prose = html.split('<pre><code class="language-json">')[0]
    assert not re.search(r"<(script|img|a|b|em|del|hr|ol|h[3-6])\b", prose), "markup got through"
    assert prose.count("<h1>") == 1 and prose.count("<h2>") == 7  # the title and the sections, no more
    assert prose.count("<li>") == 2  # Valid and the one more figure: no list item from the hostile text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "javascript:alert(2)" in html
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):  # every row of every table keeps its cells
        assert len(re.findall(r"<t[dh]>", row)) in (2, 3, 6, 7), row
    code = re.search(r'<pre><code class="language-json">(.*?)</code></pre>', html, flags=re.S)
    assert code is not None
    assert json.loads(unescape(code.group(1)))["messages"][0]["content"] == f"question 0 {HOSTILE}{FENCES}"


@pytest.mark.parametrize(("existing", "shared", "expected"), [
    (None, False, "README.md"),                                   # a folder of its own: the Hub's file
    ("this", False, "README.md"),                                 # this dataset's card, written before
    ("other", False, "train.README.md"),                          # another dataset's card: left alone
    ("# My project\n", False, "train.README.md"),                 # the user's own README: left alone
    (None, True, "train.README.md"),                              # the workspace's datasets/ folder
])
def test_where_the_card_goes(tmp_path: Path, existing: str | None, shared: bool, expected: str) -> None:
    spec = hostile_spec(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    if existing in ("this", "other"):
        name = "train.jsonl" if existing == "this" else "eval.jsonl"
        export_dataset([record(0)], folder / name, "sharegpt", card=DatasetCard(facts_for(spec)))
        if existing == "other":
            (folder / name).unlink()
    elif existing is not None:
        (folder / "README.md").write_text(existing, encoding="utf-8")
    before = (folder / "README.md").read_bytes() if (folder / "README.md").exists() else None
    assert card_path(folder / "train.jsonl", shared) == folder / expected
    result = export_dataset([record(0)], folder / "train.jsonl", "sharegpt", card=DatasetCard(facts_for(spec), shared))
    assert result.card_path == folder / expected and card_of(folder / expected) == "train.jsonl"
    if expected != "README.md" and before is not None:
        assert (folder / "README.md").read_bytes() == before


def test_the_card_is_written_with_its_dataset_or_not_at_all(tmp_path: Path) -> None:
    spec = hostile_spec(tmp_path)
    target = tmp_path / "out" / "train.jsonl"
    export_dataset([record(0)], target, "sharegpt", card=DatasetCard(facts_for(spec)))
    before = {path.name: path.read_bytes() for path in target.parent.iterdir()}

    def exploding() -> Iterator[ExportRecord]:
        yield record(1)
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError):
        export_dataset(exploding(), target, "sharegpt", card=DatasetCard(facts_for(spec)))
    assert {path.name: path.read_bytes() for path in target.parent.iterdir()} == before


def test_a_stream_gets_no_card(tmp_path: Path) -> None:
    spec = hostile_spec(tmp_path)
    result = export_dataset([record(0)], "/dev/null", "sharegpt", card=DatasetCard(facts_for(spec)))
    assert result.card_path is None and result.written == 1


def test_counts_costs_and_fine_tuning_figures(tmp_path: Path) -> None:
    spec = hostile_spec(tmp_path)
    create, update = {"operation": "create", "style": "casual"}, {"operation": "update", "style": "casual"}
    cells = [CellCount("main", create, 3, 30, 28), CellCount("main", update, 2, 20, 20)]
    result = ExportResult(tmp_path / "train.jsonl", "sharegpt", "sidecar", written=4,
                          sidecar_path=tmp_path / "train.jsonl.provenance.jsonl", sha256="ab" * 32)
    result.exported = Counter({("main", cell_key(create)): 3, ("main", cell_key(update)): 1})
    result.batches = Counter({"batch_b": 2, "batch_a": 2})
    html = body_html(render_card(facts_for(spec, cells), result))
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)]
    assert ["main", "500", "5", "50", "48", "4"] in rows  # per stage: target, requests, generated, valid, exported
    assert ["main", "operation=create, style=casual", "3", "30", "28", "3"] in rows  # the job's axis order
    assert ["per exported example", "$0.00003075"] in rows and ["budget", "$0.15"] in rows
    assert "Batches: 2 (batch_a, batch_b)." in html and "train.jsonl.provenance.jsonl" in html
    assert "Simulated" not in html  # backend openai


@pytest.mark.parametrize("description", ["1. first, then 2. second", "- a list?", "=== a heading underline",
                                         "--- a rule", "    indented code", "# a heading", "> a quote"])
def test_a_description_that_starts_like_markdown_is_a_paragraph(tmp_path: Path, description: str) -> None:
    spec = hostile_spec(tmp_path).model_copy(update={"description": description})
    result = ExportResult(tmp_path / "train.jsonl", "sharegpt", "none", written=1, sha256="0" * 64)
    html = body_html(render_card(facts_for(spec), result))
    first = html.split("</h1>\n", 1)[1].split("\n", 1)[0]  # the line after the title
    assert first.startswith("<p>") and first.endswith("</p>") and unescape(first[3:-4]) == description.strip()
