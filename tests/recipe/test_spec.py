"""Loading job specs: every bad input is one clear `Error:` line with exit status 1 (2 for CLI misuse)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.errors import SpecError
from batchgen.recipe.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
TASK_API = ROOT / "jobs" / "task_api"
Edit = Callable[[str], str]


def make_job(
    tmp_path: Path, toml: Edit | None = None, template: Edit | None = None, seeds: Edit | None = None
) -> Path:
    job = tmp_path / "job"
    shutil.copytree(TASK_API, job)
    for name, edit in (("job.toml", toml), ("prompt.j2", template), ("seeds.jsonl", seeds)):
        if edit is not None:
            (job / name).write_text(edit((job / name).read_text(encoding="utf-8")), encoding="utf-8")
    return job


def plan_error(job: Path) -> str:
    result = CliRunner().invoke(cli, ["plan", str(job)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_task_api_loads() -> None:
    spec = load_spec(TASK_API)
    assert spec.name == "task_api" and spec.model == "gpt-4o-mini" and spec.format == "sharegpt"
    assert spec.target == 500 and spec.budget_usd == Decimal("0.15")
    assert len(spec.seeds) >= 15
    assert list(spec.axes.values) == ["operation", "style", "include_errors"]
    assert spec.validate_.response_patterns == [
        "Created task:",
        "Updated task:",
        "Completed task:",
        "Deleted task:",
        "Error:",
        "tasks found",
    ]
    assert len(spec.spec_hash) == 64


def test_task_api_seeds_cover_the_lesson() -> None:
    spec = load_spec(TASK_API)
    answers = [
        turn["value"] for seed in spec.seeds for turn in seed["conversations"] if turn["from"] == "gpt"
    ]
    for pattern in spec.validate_.response_patterns:
        assert any(pattern in answer for answer in answers), pattern
    for priority in ("low", "medium", "high"):
        assert any(f"Priority: {priority}" in a or f"({priority}," in a for a in answers), priority
    assert any("tomorrow" in a for a in answers) and any("2025-03-03" in a for a in answers)
    assert all(any(p in a for p in spec.validate_.response_patterns) for a in answers)


@pytest.mark.parametrize(
    "path", sorted(p.parent for p in (ROOT / "jobs").glob("*/job.toml")), ids=lambda p: p.name
)
def test_every_shipped_job_loads(path: Path) -> None:
    assert load_spec(path).resolved_stages()


def test_spec_hash_ignores_budget_but_not_prompt(tmp_path: Path) -> None:
    base = load_spec(TASK_API).spec_hash
    budget = make_job(tmp_path / "a", toml=lambda t: t.replace("budget_usd = 0.15", "budget_usd = 1"))
    prompt = make_job(tmp_path / "b", template=lambda t: t + "\nBe creative.\n")
    assert load_spec(budget).spec_hash == base
    assert load_spec(prompt).spec_hash != base


def test_a_stage_that_judges_nothing_keeps_the_hash_it_had_before_judge_stages(tmp_path: Path) -> None:
    """The hash names a job's requests and the ledger's jobs: a job started before judge stages existed must still
    be the same job. Written out, kind = "generate" is the default and changes nothing either; a judge does."""
    evol = ROOT / "jobs" / "evol_task_api"
    assert load_spec(evol).spec_hash[:12] == "f5cc13c076ad"  # as the Evol job was hashed before there were judges
    job = tmp_path / "evol"
    shutil.copytree(evol, job)
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(text.replace('name = "simple"', 'name = "simple"\nkind = "generate"'), encoding="utf-8")
    assert load_spec(job).spec_hash[:12] == "f5cc13c076ad"
    (job / "judge.j2").write_text("Score these: {{ examples_json }}", encoding="utf-8")
    toml.write_text(text + '\n[[stages]]\nname = "judge"\nkind = "judge"\nfrom = "edge_case"\n'
                    'template = "judge.j2"\n', encoding="utf-8")
    assert load_spec(job).spec_hash[:12] != "f5cc13c076ad"


def test_job_by_bare_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_spec("task_api").name == "task_api"


BAD_CASES: dict[str, tuple[dict[str, Edit], list[str]]] = {
    "toml syntax": (
        {"toml": lambda t: t.replace("target = 500", "target = = 500")},
        ["job.toml: TOML syntax error", "line 8, column 10"],
    ),
    "unknown key": (
        {"toml": lambda t: t.replace("seeds_per_request", "seed_per_request")},
        ["unknown key 'seed_per_request'", "did you mean 'seeds_per_request'?", "line 17"],
    ),
    "unknown top-level key": (
        {"toml": lambda t: t.replace("budget_usd", "budget")},
        ["unknown key 'budget'", "did you mean 'budget_usd'?"],
    ),
    "wrong type": (
        {"toml": lambda t: t.replace("max_tokens = 2000", 'max_tokens = "lots"')},
        ["prompt.max_tokens", "valid integer", "'lots'"],
    ),
    "target zero": (
        {"toml": lambda t: t.replace("target = 500", "target = 0")},
        ["target", "greater than 0"],
    ),
    "target negative": (
        {"toml": lambda t: t.replace("target = 500", "target = -5")},
        ["target", "greater than 0"],
    ),
    "too many examples per request": (
        {"toml": lambda t: t.replace("examples_per_request = 10", "examples_per_request = 51")},
        ["examples_per_request", "less than or equal to 50"],
    ),
    "unknown model": (
        {"toml": lambda t: t.replace('"gpt-4o-mini"', '"gpt-4o-mega"')},
        ["No price known for model 'gpt-4o-mega'", "prices.toml", "BATCHGEN_PRICES"],
    ),
    "model of no known family": (
        {"toml": lambda t: t.replace('"gpt-4o-mini"', '"llama-3"')},
        ["'llama-3'", "no tokenizer"],
    ),
    "missing template file": (
        {"toml": lambda t: t.replace("prompt.j2", "nope.j2")},
        ["prompt.template = 'nope.j2'", "not found"],
    ),
    "missing seeds file": (
        {"toml": lambda t: t.replace("seeds.jsonl", "nope.jsonl")},
        ["prompt.seeds = 'nope.jsonl'", "not found"],
    ),
    "template variable": (
        {"template": lambda t: t.replace("{{ style }}", "{{ styel }}")},
        ["prompt.j2 line 30", "'styel' is not defined", "did you mean 'style'?"],
    ),
    "template attribute": (
        {"template": lambda t: t.replace("{{ style }}", "{{ cell.nope }}")},
        ["prompt.j2 line 30", "no attribute 'nope'"],
    ),
    "template syntax": (
        {"template": lambda t: t.replace("{% endif %}", "")},
        ["prompt.j2 line", "template syntax error"],
    ),
    "source variable outside a from-stage": (
        {"template": lambda t: t.replace("{{ style }}", "{{ example }}")},
        ["'example' exists only in a stage with from"],
    ),
    "seed of the wrong format": (
        {"seeds": lambda t: t.replace('"gpt"', '"assistant"', 1)},
        ["seeds.jsonl line 1", "not a valid sharegpt example", "conversations.1.from"],
    ),
    "seed that is not JSON": ({"seeds": lambda t: t + "{oops\n"}, ["seeds.jsonl line 21", "not JSON"]),
    "too few seeds": (
        {"toml": lambda t: t.replace("seeds_per_request = 5", "seeds_per_request = 50")},
        ["seeds_per_request = 50", "holds 20 seed examples"],
    ),
    "unknown from stage": (
        {"toml": lambda t: t + '\n[[stages]]\nname = "two"\nfrom = "one"\n'},
        ["from = 'one' is not an earlier stage"],
    ),
    "json_object without the word JSON": (
        {
            "toml": lambda t: t.replace(
                'structured_output = "json_schema"', 'structured_output = "json_object"'
            ).replace('"You generate training data in JSON format."', '"Be helpful."'),
            "template": lambda t: t.replace("JSON", "object"),
        },
        ["needs the word JSON"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_input_is_one_line(tmp_path: Path, case: str) -> None:
    edits, expected = BAD_CASES[case]
    line = plan_error(make_job(tmp_path, **edits))
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


def test_missing_job_directory(tmp_path: Path) -> None:
    assert "No job directory" in plan_error(tmp_path / "nothing")


def test_missing_job_toml(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "No job.toml in" in plan_error(tmp_path / "empty")


def test_cli_misuse_exits_2() -> None:
    result = CliRunner().invoke(cli, ["plan"])
    assert result.exit_code == 2
    assert "Missing argument 'JOB'" in result.stderr
    result = CliRunner().invoke(cli, ["compile", str(TASK_API), "--attempt", "0"])
    assert result.exit_code == 2


def test_library_raises_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="did you mean 'model'"):
        load_spec(make_job(tmp_path, toml=lambda t: t.replace("model =", "modle =")))


def test_loading_a_spec_does_not_build_a_tokenizer() -> None:
    """Commands that only read a job (collect, status, show) must not pay ~80 MB and ~0.3 s for an encoding."""
    import subprocess
    import sys

    code = ("from batchgen.recipe import tokens; from batchgen.recipe.loader import load_spec; "
            "load_spec('jobs/task_api'); load_spec('jobs/evol_task_api'); "
            "print(tokens.get_encoding.cache_info().currsize)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "0"
