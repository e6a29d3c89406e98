"""`batchgen report --html` and `batchgen compare --html`: the shipped jobs run once on the embedded emulator, an
example made hostile in the ledger, and the pages opened in headless Chromium: no console message, no request
but the page itself, the figures of `--json` on the page, the hostile example shown as text. The figures of
`report --json` are checked against `costs --json` and the ledger.

The browser part needs playwright (the test extra) and a Chromium of the system (Debian's `chromium`); it is
skipped, saying which is missing, when either is, but fails with BATCHGEN_TEST_BROWSER=required (as in CI). Each
browser test keeps screenshots in its temporary folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sqlite3
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from workspaces import EVOL, ROOT, TASK_API, batchgen, fresh_workspace, judged_job

from batchgen.cli import cli
from batchgen.money import format_usd

HOSTILE = ('Plan <script>document.title="owned"</script> then </table></div><img src="http://127.0.0.1:9/x.png"> '
           '& <b>bold</b> \u202eevil')
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both shipped jobs run to the end in one workspace, the first sampled example of task_api made hostile."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("html"))
    for job in (TASK_API, EVOL):
        invoke(workspace, "run", str(job), "--quiet")
    first = report(workspace, "task_api")["samples"][0]["provenance"]
    with sqlite3.connect(workspace / "ledger.db") as db:
        (content,) = db.execute("SELECT content_json FROM examples WHERE custom_id = ? AND position = ?",
                                [first["custom_id"], first["position"]]).fetchone()
        example = json.loads(content)
        example["conversations"][0]["value"] = HOSTILE
        db.execute("UPDATE examples SET content_json = ? WHERE custom_id = ? AND position = ?",
                   [json.dumps(example), first["custom_id"], first["position"]])
    return workspace


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Task API job with its judge at threshold 8 and no top-up: stage main ends short, and so do some cells."""
    parent = tmp_path_factory.mktemp("short")
    workspace = fresh_workspace(parent)
    done = CliRunner(env={"BATCHGEN_WORKSPACE": str(workspace)}).invoke(
        cli, ["run", str(judged_job(parent, threshold=8, max_top_ups="0")), "--quiet"])
    assert done.exit_code == 3, done.output  # ended short of its target
    return workspace


def invoke(workspace: Path, *args: str) -> str:
    """The command's stdout, run in this process (a fresh process each time is what `batchgen()` is for)."""
    done = CliRunner(env={"BATCHGEN_WORKSPACE": str(workspace)}).invoke(cli, list(args))
    assert done.exit_code == 0, done.output
    return done.stdout


def report(workspace: Path, job: str, *args: str) -> dict[str, Any]:
    return json.loads(invoke(workspace, "report", job, "--json", *args))


def html_page(workspace: Path, *args: str) -> Path:
    """Run a command with --html --json; the page it wrote."""
    path = Path(json.loads(invoke(workspace, *args, "--html", "--json"))["path"])
    assert path.is_file()
    return path


# -- what --json says ------------------------------------------------------------------------------------------


def test_the_json_has_targets_flow_costs_and_samples(workspace: Path) -> None:
    found = report(workspace, "task_api")
    costs = json.loads(invoke(workspace, "costs", "--job", "task_api", "--by", "stage", "--json"))
    [stage] = found["stages"]
    assert found["targets"] == [{"stage": "main", "target": 500, "valid": stage["valid"], "status": "reached",
                                 "short": None}]
    assert found["flow"] == [{"name": "seeds", "count": 20, "target": None},
                             {"name": "main", "count": stage["valid"], "target": 500},
                             {"name": "dataset", "count": 500, "target": None}]
    assert found["dataset"]["examples"] == 500
    total = found["costs"]["total"]
    for key in ("cost_usd", "standard_usd", "saving_usd", "estimated_usd", "estimated_actual_usd"):
        assert Decimal(total[key]) == Decimal(costs["total"][key]), key
    assert Decimal(total["cost_usd"]) == Decimal(found["totals"]["cost_usd"]) > 0
    assert Decimal(total["standard_usd"]) == 2 * Decimal(total["cost_usd"])  # the Batch API's half price
    assert sum(Decimal(line["cost_usd"]) for line in found["costs"]["by_batch"]) == Decimal(total["cost_usd"])
    assert sum(Decimal(line["cost_usd"]) for line in found["costs"]["by_day"]) == Decimal(total["cost_usd"])
    assert [line["stage"] for line in found["costs"]["by_stage"]] == ["main"]
    assert found["costs"]["in_flight"] == {"batches": 0, "estimated_usd": "0"}


def test_the_samples_are_exported_examples_two_a_cell_with_provenance(workspace: Path) -> None:
    found = report(workspace, "task_api")
    per_cell = Counter(json.dumps(sample["cell"], sort_keys=True) for sample in found["samples"])
    assert len(per_cell) == 40 and set(per_cell.values()) == {2}
    exported = {}
    for line in (workspace / "datasets" / "task_api.sharegpt.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        exported[(record["_provenance"]["custom_id"], record["_provenance"]["position"])] = record
    for sample in found["samples"]:
        provenance = sample["provenance"]
        assert provenance["job"] == "task_api" and provenance["stage"] == "main"
        assert provenance["cell"] == sample["cell"] and provenance["root"].startswith("seed:")
        assert (provenance["custom_id"], provenance["position"]) in exported
    assert found["samples"][0]["example"]["conversations"][0]["value"] == HOSTILE
    assert report(workspace, "task_api", "--samples", "0")["samples"] == []
    assert len(report(workspace, "task_api", "--samples", "1")["samples"]) == 40


def test_each_evol_stage_has_its_target_and_the_flow_runs_through_them(workspace: Path) -> None:
    found = report(workspace, "evol_task_api")
    names = ["simple", "moderate", "complex", "edge_case"]
    assert [row["stage"] for row in found["targets"]] == names
    assert all(row["target"] == 125 and row["status"] == "reached" and row["valid"] >= 125
               for row in found["targets"])
    assert [step["name"] for step in found["flow"]] == ["seeds", *names, "dataset"]
    assert found["flow"][-1]["count"] == 500
    assert [line["stage"] for line in found["costs"]["by_stage"]] == sorted(names)
    assert {sample["stage"] for sample in found["samples"]} == set(names)


def test_a_stage_short_of_its_target_says_so_with_its_thin_cells(short: Path) -> None:
    found = report(short, "task_api")
    main, judge = found["targets"]
    assert main["status"] == "short" and main["valid"] < 500
    assert main["short"] == {"missing": 500 - main["valid"], "top_ups": 0, "reason": "max_top_ups"}
    assert judge == {"stage": "judge", "target": 0, "valid": 0, "status": "judge", "short": None}
    assert found["flow"][1] == {"name": "main", "count": main["valid"], "target": 500}
    thin = [cell for cell in found["stages"][0]["cells"] if cell["valid"] < cell["share"]]
    assert thin and sorted(json.dumps(row["cell"], sort_keys=True) for row in found["short_cells"]) == sorted(
        json.dumps(cell["cell"], sort_keys=True) for cell in thin)
    assert {row["reason"] for row in found["short_cells"]} == {"max_top_ups"}


def test_an_embeddings_sample_shows_its_input_and_the_size_of_its_vector(tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    invoke(workspace, "run", str(ROOT / "jobs" / "task_api_embeddings"), "--quiet")
    found = report(workspace, "task_api_embeddings", "--samples", "1")
    assert len(found["samples"]) == 200  # one a cell
    with sqlite3.connect(workspace / "ledger.db") as db:
        stored = {row[0]: json.loads(row[1]) for row in db.execute(
            "SELECT custom_id, content_json FROM examples WHERE valid = 1")}
    for sample in found["samples"]:
        whole = stored[sample["provenance"]["custom_id"]]
        assert sample["example"] == {"input": whole["input"], "dimensions": len(whole["embedding"])}
    text = html_page(workspace, "report", "task_api_embeddings").read_text(encoding="utf-8")
    first = found["samples"][0]["example"]
    assert f"an embedding of {first['dimensions']} dimensions" in text and first["input"] in text


def test_a_job_at_work_has_stages_running_and_pending_and_batches_in_flight(tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    invoke(workspace, "submit", str(EVOL))
    found = report(workspace, "evol_task_api")
    assert [(row["stage"], row["status"]) for row in found["targets"]] == [
        ("simple", "running"), ("moderate", "pending"), ("complex", "pending"), ("edge_case", "pending")]
    assert found["costs"]["in_flight"]["batches"] == 1 and Decimal(found["costs"]["in_flight"]["estimated_usd"]) > 0
    assert found["dataset"] is None and found["flow"][-1] == {"name": "dataset", "count": 0, "target": None}
    text = html_page(workspace, "report", "evol_task_api").read_text(encoding="utf-8")
    assert 'class="short"' not in text  # nothing has ended short yet
    assert "in flight (1 batch)" in text and "No valid example yet." in text


# -- the page as a file ----------------------------------------------------------------------------------------


def test_the_page_escapes_the_example_and_allows_no_script(workspace: Path) -> None:
    text = html_page(workspace, "report", "task_api").read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "<img" not in text.lower()
    assert str(workspace) not in text and "Dataset: 500 examples in task_api.sharegpt.jsonl" in text
    assert "Plan &lt;script&gt;document.title=&#34;owned&#34;&lt;/script&gt; then &lt;/table&gt;" in text
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
    assert policy is not None and policy.group(1).startswith("default-src 'none';")
    css = re.search(r"<style>(.*?)</style>", text, re.S)
    assert css is not None
    digest = base64.b64encode(hashlib.sha256(css.group(1).encode("utf-8")).digest()).decode("ascii")
    assert f"style-src 'sha256-{digest}';" in policy.group(1)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        "http://127.0.0.1:9/x.png", "")  # the only address is the hostile example's, as text


def test_the_page_goes_to_the_workspace_reports_or_to_o(workspace: Path, tmp_path: Path) -> None:
    done = batchgen(workspace, "report", "task_api", "--html", check=True)
    assert done.stdout == f"Wrote {workspace / 'reports' / 'task_api.html'}\n"
    target = tmp_path / "out" / "page.html"
    done = invoke(workspace, "report", "task_api", "--html", "-o", str(target), "--json")
    assert json.loads(done) == {"path": str(target)} and target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["page.html"]  # no temporary file left


def test_bad_output_is_one_error_line(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    done = batchgen(workspace, "report", "task_api", "--html", "-o", str(tmp_path / "file" / "page.html"))
    assert done.returncode == 1 and done.stderr.startswith("Error: Cannot create folder")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    done = batchgen(workspace, "report", "task_api", "-o", str(tmp_path / "page.html"))
    assert done.returncode == 2 and "add --html" in done.stderr
    done = batchgen(workspace, "compare", "task_api", "nope", "--html")
    assert done.returncode == 1 and done.stderr.startswith("Error: No job 'nope'")


# -- the page in a browser -------------------------------------------------------------------------------------


def missing(reason: str) -> None:
    """Skip for want of the browser, or fail where it must be there (BATCHGEN_TEST_BROWSER=required: CI)."""
    if os.environ.get("BATCHGEN_TEST_BROWSER") == "required":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium of the system, driven by playwright (whose own browser download is not needed)."""
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed: pip install -e '.[test]'")
    executable = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    if executable is None:
        missing("no Chromium on this machine: apt-get install chromium (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Any, path: Path, width: int, shot: Path) -> tuple[Any, list[str], list[str], int]:
    """The page at `width` pixels, after it loaded (a screenshot of it kept in `shot`): the page, every console
    message and every request it made, and the width of its content."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    messages: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: messages.append(f"pageerror: {error}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    wide = page.evaluate("document.documentElement.scrollWidth")
    page.screenshot(path=str(shot), full_page=True)
    return page, messages, requests, wide


def test_the_report_in_chromium(browser: Any, workspace: Path, tmp_path: Path) -> None:
    path = html_page(workspace, "report", "task_api")
    found = report(workspace, "task_api")
    page, messages, requests, wide = open_page(browser, path, 1000, tmp_path / "report.png")
    assert messages == [] and requests == [path.as_uri()]
    assert page.title() == "batchgen report: task_api"  # the hostile example's script did not run
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
    text = page.inner_text("body")
    stage, costs = found["stages"][0], found["costs"]["total"]
    for figure in (format_usd(Decimal(costs["cost_usd"])), format_usd(Decimal(costs["standard_usd"])),
                   format_usd(Decimal(costs["estimated_usd"])), f"{costs['estimate_error_pct']}%",
                   f"{stage['yield'] * 100:.1f}%", f"{stage['near_duplicate_rate'] * 100:.1f}%",
                   f"{stage['valid']} / 500", format_usd(Decimal(stage["cost_per_valid_usd"])),
                   *(line["batch"] for line in found["costs"]["by_batch"])):
        assert figure in text, figure
    rejected = page.locator("table.bars[aria-label='Rejections of stage main'] tr").all_inner_texts()
    assert [row.split() for row in rejected] == [[category, str(count)] for category, count in stage["reasons"].items()]
    heatmap = page.locator("svg.heatmap text.cell").all_text_contents()
    assert heatmap == [f"{cell['valid']}/{cell['share']}" for cell in stage["cells"]]
    hostile = page.locator(".sample").first.locator("pre.text").first
    # Shown as text, whole, the right-to-left override as its escape (else "evil" would read "live").
    assert hostile.inner_text() == HOSTILE.replace("\u202e", "\\u202e")
    first = found["samples"][0]["provenance"]
    assert f"{first['custom_id']}#{first['position']}" in page.locator(".sample").first.inner_text()


def test_the_report_fits_a_phone_and_prints(browser: Any, workspace: Path, tmp_path: Path) -> None:
    path = html_page(workspace, "report", "evol_task_api")
    page, messages, requests, wide = open_page(browser, path, 390, tmp_path / "phone.png")
    assert messages == [] and requests == [path.as_uri()]
    assert wide <= 390  # wide tables and the heatmaps scroll in their own box
    for stage in ("simple", "moderate", "complex", "edge_case"):
        assert f"Stage {stage}" in page.inner_text("#cells")
    pdf = page.pdf(path=str(tmp_path / "report.pdf"))
    assert pdf.startswith(b"%PDF")


def test_compare_in_chromium(browser: Any, workspace: Path, tmp_path: Path) -> None:
    path = html_page(workspace, "compare", "task_api", "evol_task_api")
    assert path == workspace / "reports" / "compare-task_api-evol_task_api.html"
    jobs = json.loads(invoke(workspace, "compare", "task_api", "evol_task_api", "--json"))
    page, messages, requests, wide = open_page(browser, path, 1000, tmp_path / "compare.png")
    assert messages == [] and requests == [path.as_uri()]
    text = page.inner_text("body")
    for job in jobs:
        for figure in (format_usd(Decimal(job["cost_usd"])), format_usd(Decimal(job["cost_per_valid_usd"])),
                       f"{job['yield'] * 100:.1f}%", f"{job['valid']:,}"):
            assert figure in text, (job["job"], figure)
        for stage in job["stages"]:
            assert stage["name"] in text
    assert page.locator("table.bars").count() == 4


def test_the_short_stage_and_its_thin_cells_in_chromium(browser: Any, short: Path, tmp_path: Path) -> None:
    path = html_page(short, "report", "task_api")
    found = report(short, "task_api")
    page, messages, requests, _ = open_page(browser, path, 1000, tmp_path / "short.png")
    assert messages == [] and requests == [path.as_uri()]
    assert page.inner_text("header .status") == "done, 1 stage short of target"
    missing = found["targets"][0]["short"]["missing"]
    assert f"{missing} missing after 0 top-ups (max_top_ups)" in page.inner_text("#stages")
    assert page.locator("#stages table.bars rect.short").count() == 1  # main's bar, short of its mark
    thin = [cell for cell in found["stages"][0]["cells"] if cell["valid"] < cell["share"]]
    rows = page.locator("#cells table tr").all_inner_texts()[1:]
    assert len(rows) == len(thin) and all(row.split("\t")[-1] == "max_top_ups" for row in rows)
    fills = page.locator("svg.heatmap rect").evaluate_all("rects => rects.map(r => r.getAttribute('fill'))")
    full = [cell["valid"] >= cell["share"] for cell in found["stages"][0]["cells"]]
    assert [fill == "#1a9850" for fill in fills] == full  # green is a cell at its share, and only that
    judge = found["stages"][1]["judge"]
    assert (f"Judge stage judge (scores main, threshold 8): {judge['judged']:,} scored, {judge['passed']:,} passed"
            in page.inner_text("#quality"))
