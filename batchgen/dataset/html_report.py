"""`batchgen report --html` and `batchgen compare --html`: one self-contained HTML file drawn from the same dict
as `--json` (`full_report.full_report`, `compare.JobFigures.to_dict`), so the page can never say other figures.

The page opens from disk or as a CI artifact: its CSS is inline, its charts are inline SVG (`charts`), and nothing
is fetched. Examples are model output, untrusted: the templates (`batchgen/data/*.html.j2`) are rendered by Jinja2
with autoescape on, so every string is text, and the Content-Security-Policy allows no script, no fetch, no frame
and only the page's own stylesheet (by its hash), so even markup that got through could neither run nor call out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from batchgen.dataset import charts
from batchgen.dataset.quality_report import percent, role_texts
from batchgen.disk import make_folder, write_error
from batchgen.money import format_usd

SAMPLE_CHARS = 4000  # of one turn shown in a sample; the rest is cut with an ellipsis
# Characters of a model's text that a page would act on rather than show: C0 and C1 controls but newline and tab
# (the sample keeps its lines), and the marks that reorder text (a right-to-left override makes "evil" read "live").
_UNSEEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("batchgen", "data"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(usd=_usd, pct=percent, num=_num, cut=_cut, filename=lambda path: Path(path).name)
    return env


def _usd(amount: str | Decimal | None) -> str:
    return "-" if amount is None else format_usd(Decimal(amount))


def _num(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}".removesuffix(".0") if isinstance(value, float) else f"{value:,}"


def _cut(text: str, limit: int = SAMPLE_CHARS) -> str:
    """Untrusted text as it is shown: cut at `limit` characters, each control or reordering mark written as its
    escape (\\u202e). Escaping for HTML is autoescape's."""
    text = text if len(text) <= limit else text[:limit] + "\u2026"
    return _UNSEEN.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def _stylesheet(env: Environment) -> tuple[Markup, str]:
    """The page's CSS (ours, trusted: it goes in unescaped) and the CSP source that allows exactly it."""
    assert env.loader is not None
    css = env.loader.get_source(env, "report.css")[0]
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    return Markup(css), f"'sha256-{digest}'"


def _render(template: str, **context: Any) -> str:
    env = _environment()
    css, style_source = _stylesheet(env)
    policy = Markup(f"default-src 'none'; style-src {style_source}; img-src 'none'; script-src 'none'; "
                    "base-uri 'none'; form-action 'none'")  # ours alone: written as it is
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(template).render(css=css, policy=policy, generated=generated, **context)


def report_page(report: Mapping[str, Any]) -> str:
    """The HTML page of one job's report (the dict of `full_report`)."""
    stages = [stage for stage in report["stages"] if "judge" not in stage]
    heatmaps = {stage["name"]: charts.heatmap(stage["cells"], report["axes"]) for stage in stages if stage["cells"]}
    costs = report["costs"]
    days = [(line["day"], Decimal(line["cost_usd"])) for line in costs["by_day"]]
    return _render("report.html.j2", report=report, stages=stages, heatmaps=heatmaps,
                   flow=_flow_bars(report["flow"], report["targets"]), reasons=_reason_bars(report),
                   samples=_samples(report),
                   stage_costs=_paired(costs["by_stage"], "stage", "cost_usd", "standard_usd"),
                   estimates=_paired(costs["by_batch"], "batch", "estimated_usd", "estimated_actual_usd"),
                   days=charts.columns(days, _usd), short_cells=_short_cells(report))


def comparison_page(jobs: Sequence[Mapping[str, Any]], table: Sequence[Sequence[str]]) -> str:
    """The HTML page of `compare`: its table (`compare.table_rows`, one column per job) and a chart per figure."""
    figures = [("Yield (valid / requested)", "yield", percent),
               ("Near-duplicates", "near_duplicate_rate", percent),
               ("Cost at batch price", "cost_usd", _usd),
               ("Cost per valid example", "cost_per_valid_usd", _usd)]
    bars = [(title, _bars([(job["job"], job[key]) for job in jobs], show)) for title, key, show in figures]
    return _render("compare.html.j2", jobs=jobs, table=table, bars=bars)


def _bars(items: Sequence[tuple[str, Any]], show: Any) -> list[dict[str, Any]]:
    lengths = charts.bar_lengths([None if value is None else Decimal(str(value)) for _, value in items])
    return [{"label": label, "length": length, "value": show(value), "mark": None, "short": False}
            for (label, value), length in zip(items, lengths, strict=True)]


def _flow_bars(flow: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """seeds -> stages -> dataset as bars on one scale, each stage with its target marked, red if it ended short
    (a stage still at work is not short yet)."""
    ended_short = {row["stage"] for row in targets if row["status"] == "short"}
    lengths = charts.bar_lengths([max(step["count"], step["target"] or 0) for step in flow] +
                                 [step["count"] for step in flow])
    scale, counts = lengths[:len(flow)], lengths[len(flow):]
    rows = []
    for step, top, length in zip(flow, scale, counts, strict=True):
        target = step["target"]
        mark = None if not target else round(top * target / max(step["count"], target), 2)
        rows.append({"label": step["name"], "length": length, "mark": mark,
                     "value": f"{step['count']:,}" + (f" / {target:,}" if target else ""),
                     "short": step["name"] in ended_short})
    return rows


def _reason_bars(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {stage["name"]: _bars(list(stage["reasons"].items()), _num) for stage in report["stages"]
            if stage["reasons"]}


def _paired(lines: Sequence[Mapping[str, Any]], key: str, first: str, second: str) -> list[dict[str, Any]]:
    """Two amounts per line (cost and standard price, estimate and actual) as two bars on one scale."""
    amounts = [Decimal(line[name]) for line in lines for name in (first, second)]
    lengths = charts.bar_lengths(amounts)
    return [{"label": str(line[key]), "line": line, "first": lengths[2 * i], "second": lengths[2 * i + 1]}
            for i, line in enumerate(lines)]


def _short_cells(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cells below their share, the thinnest first, with why they stopped there where the ledger says."""
    axes = report["axes"]
    why = {(row["stage"], charts.cell_label(row["cell"], axes)): row["reason"] for row in report["short_cells"]}
    found = [{"stage": stage["name"], "cell": charts.cell_label(cell["cell"], axes), "valid": cell["valid"],
              "share": cell["share"], "yield": cell["yield"], "reasons": cell["reasons"]}
             for stage in report["stages"] if "judge" not in stage for cell in stage["cells"]
             if cell["valid"] < cell["share"]]
    for row in found:
        row["why"] = why.get((row["stage"], row["cell"]))
    return sorted(found, key=lambda row: (row["valid"] / row["share"], row["stage"]))


def _samples(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The samples grouped by stage and cell, each as its turns (role, text), an embedding as its input, anything
    else as its JSON."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for sample in report["samples"]:
        label = charts.cell_label(sample["cell"], report["axes"])
        group = groups.setdefault((sample["stage"], label), {"stage": sample["stage"], "cell": label,
                                                             "examples": []})
        example = sample["example"]
        turns, raw = role_texts(example, report["format"]), None
        if not turns and isinstance(example.get("input"), str):  # an embedding: its input, and the vector's size
            turns, raw = [("input", example["input"])], f"an embedding of {example.get('dimensions')} dimensions"
        elif not turns:
            raw = _json_text(example)
        group["examples"].append({"turns": turns, "raw": raw, "provenance": sample["provenance"]})
    return list(groups.values())


def _json_text(value: Any) -> str:
    return _cut(json.dumps(value, ensure_ascii=False), SAMPLE_CHARS)


def default_path(folder: Path, name: str) -> Path:
    """Where a page goes unless told: `<folder>/<name>.html` (the workspace's reports/), the name made safe for a
    file."""
    return folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.html"


def write_page(path: Path, text: str) -> Path:
    """Write the page atomically (a reader never sees half of it); a refusal of the disk is one line."""
    make_folder(path.parent, f"report {path.name}", "choose another place with -o")
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o644)  # mkstemp makes 0600; a report is for others to read too
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise write_error(error, f"report {path}") from error
    return path
