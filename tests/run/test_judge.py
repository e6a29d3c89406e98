"""A judge stage (`kind = "judge"`): it scores every valid example of its source stage through the Batch API, and
the examples scored below its threshold leave the dataset with the judge's reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from workspaces import (
    FAST,
    assert_no_duplicate_batches,
    assert_one_final_outcome_each,
    batchgen,
    dataset,
    fresh_workspace,
    judged_job,
)

from batchgen.ledger import Ledger

SHOWN = re.compile(r"^Example (\d+): (.*)$", re.MULTILINE)


def config(**settings: Any) -> str:
    return json.dumps({**json.loads(FAST), **settings})


def judge_requests(workspace: Path) -> dict[str, list[dict[str, Any]]]:
    """custom_id -> the examples each judge request showed, read from the request lines of its shard files."""
    shown: dict[str, list[dict[str, Any]]] = {}
    for path in (workspace / "shards" / "task_api" / "judge").rglob("shard-*.jsonl"):
        if path.name.endswith(".manifest.jsonl"):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            request = json.loads(line)
            prompt = request["body"]["messages"][-1]["content"]
            found = sorted((int(i), json.loads(text)) for i, text in SHOWN.findall(prompt))
            assert [i for i, _ in found] == list(range(len(found)))
            shown[request["custom_id"]] = [example for _, example in found]
    return shown


def judge_scores(workspace: Path) -> dict[str, list[dict[str, Any]]]:
    """custom_id -> the scores of each judge answer in the downloaded output files."""
    scores = {}
    for path in (workspace / "results" / "task_api").glob("*.output.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            content = json.loads(row["response"]["body"]["choices"][0]["message"]["content"])
            if "scores" in content:
                scores[row["custom_id"]] = content["scores"]
    return scores


def exported(workspace: Path) -> list[dict[str, Any]]:
    lines = (workspace / "datasets" / "task_api.sharegpt.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def content_key(example: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in example.items() if k != "_provenance"}, sort_keys=True)


def test_a_judge_removes_exactly_the_examples_it_scores_below_its_threshold(tmp_path: Path):
    """The acceptance: forced low scores (a third of the examples, on the emulator) take exactly those examples
    out of the export, each rejected with the judge's reason; the others stay. (No top-ups: the export then holds
    every example that passed.)"""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.3))
    job = judged_job(tmp_path, max_top_ups="0")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 3, done.stderr  # the judge leaves "main" below its 500
    shown, scores = judge_requests(workspace), judge_scores(workspace)
    assert set(scores) <= set(shown) and scores
    low, high = set(), set()
    for custom_id, given in scores.items():
        assert sorted(s["index"] for s in given) == list(range(len(shown[custom_id])))
        for score in given:
            (low if score["score"] < 7 else high).add(content_key(shown[custom_id][score["index"]]))
    judged = sum(len(given) for given in scores.values())
    assert 0.2 < len(low) / judged < 0.4  # the share the emulator was told to score low
    kept = {content_key(example) for example in exported(workspace)}
    assert kept == high  # every example scored at or above the threshold, and none below it
    with Ledger.open(workspace / "ledger.db") as ledger:
        rejected = ledger.rows("SELECT content_json, reason FROM examples WHERE stage = 'main' AND category = 'judge'")
        stages = ledger.rows("SELECT stage, count(*) AS n FROM judgments GROUP BY stage")
    assert {content_key(json.loads(r["content_json"])) for r in rejected} == low
    assert all(r["reason"].startswith("Low judge score: ") and "below 7 (judge): " in r["reason"] for r in rejected)
    assert stages == [{"stage": "judge", "n": judged}]

    show = batchgen(workspace, "show", "task_api", "--json", check=True)
    summary = json.loads(show.stdout)
    assert summary["judged"]["judge"] | {"mean_score": None} == {
        "judged": judged, "passed": len(high), "rejected": len(low), "mean_score": None}
    assert summary["short"] == [{"stage": "main", "target": 500, "missing": 500 - len(high),
                                 "top_ups": 0, "reason": "max_top_ups"}]
    text = batchgen(workspace, "show", "task_api").stdout
    assert f"Judged: stage judge scored {judged} example(s), {len(high)} passed, {len(low)} rejected" in text


def test_what_the_judge_rejects_is_made_up_by_topping_up_its_source_and_judging_that(tmp_path: Path):
    """The judge's rejections leave "main" short: "main" is topped up (its cells lowest yield first), the judge
    scores what the top-up added, once each, and so on until "main" reaches its target or its max_top_ups."""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.3))
    job = judged_job(tmp_path, max_top_ups="5")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    shown, scores = judge_requests(workspace), judge_scores(workspace)
    low = {content_key(shown[c][s["index"]]) for c, given in scores.items() for s in given if s["score"] < 7}
    kept = [content_key(example) for example in exported(workspace)]
    assert len(kept) == 500 and not low & set(kept)
    with Ledger.open(workspace / "ledger.db") as ledger:
        rounds = ledger.rows("SELECT stage, count(DISTINCT attempt) AS n FROM requests GROUP BY stage ORDER BY stage")
        twice = ledger.rows("SELECT example FROM judgments GROUP BY example HAVING count(*) > 1")
        unjudged = ledger.scalar(
            "SELECT count(*) FROM examples WHERE stage = 'main' AND valid = 1 AND custom_id || '#' || position "
            "NOT IN (SELECT example FROM judgments)")
        shown_twice = ledger.scalar(
            "SELECT count(*) FROM (SELECT j.value ->> 0 AS example FROM requests r, json_each(r.parents_json) j "
            "WHERE r.stage = 'judge' AND r.status != 'retried' GROUP BY example HAVING count(*) > 1)")
    assert dict((r["stage"], r["n"]) for r in rounds)["main"] > 1  # topped up after the judge
    assert dict((r["stage"], r["n"]) for r in rounds)["judge"] > 1  # and what was added, judged
    assert twice == [] and unjudged == 0 and shown_twice == 0
    assert "Cells: stage main: 40 of 40 at their share" in batchgen(workspace, "show", "task_api").stdout


def test_the_judge_is_planned_costed_and_reported_like_any_stage(tmp_path: Path):
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.05))
    job = judged_job(tmp_path, overgeneration="1.3")
    plan = json.loads(batchgen(workspace, "plan", str(job), "--json", check=True).stdout)
    main, judge = plan["stages"]
    assert (judge["name"], judge["kind"], judge["from"], judge["requests"]) == ("judge", "judge", "main", 65)
    assert main["requests"] == 65 and plan["target_examples"] == 500
    assert float(judge["cost_batch_expected_usd"]) > 0

    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode == 0, done.stderr  # enough overgeneration: 500 are left after the judge
    report = json.loads(batchgen(workspace, "report", "task_api", "--json", check=True).stdout)
    main_report, judge_report = report["stages"]
    with Ledger.open(workspace / "ledger.db") as ledger:
        spent = {row["stage"]: row["cost"] for row in ledger.rows(
            "SELECT r.stage, sum(s.cost_usd) AS cost FROM results s JOIN requests r ON r.custom_id = s.custom_id "
            "GROUP BY r.stage")}
        valid_before = ledger.scalar("SELECT count(*) FROM examples WHERE stage = 'main' "
                                     "AND (valid = 1 OR category = 'judge')")
    assert judge_report["judge"]["judged"] == valid_before  # every valid example scored, each once
    assert judge_report["judge"]["source"] == "main" and judge_report["judge"]["threshold"] == 7
    assert judge_report["cost_usd"] is not None and spent["judge"] > 0
    assert float(judge_report["cost_usd"]) == pytest.approx(spent["judge"])
    assert main_report["reasons"].get("judge") == judge_report["judge"]["rejected"]
    text = batchgen(workspace, "report", "task_api", check=True).stdout
    assert re.search(r"Stage judge \(scores main, threshold 7\): 65 requests, [\d,]+ examples scored", text)
    assert len(exported(workspace)) == 500


def test_judge_answers_that_cannot_be_used_are_retried_and_every_example_is_scored_once(tmp_path: Path):
    """A malformed answer scores nothing: its request is retried, and in the end every example has one score."""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.1, malformed_rate=0.25, seed=3))
    job = judged_job(tmp_path, overgeneration="1.3", max_attempts="5")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode in (0, 3), done.stderr
    with Ledger.open(workspace / "ledger.db") as ledger:
        retried = ledger.scalar("SELECT count(*) FROM requests WHERE stage = 'judge' AND status = 'retried'")
        left = ledger.scalar("SELECT count(*) FROM requests WHERE stage = 'judge' AND status NOT IN "
                             "('retried', 'succeeded')")
        scored = ledger.rows("SELECT example, count(*) AS n FROM judgments GROUP BY example HAVING n > 1")
        judged = ledger.scalar("SELECT count(*) FROM judgments")
        valid_before = ledger.scalar("SELECT count(*) FROM examples WHERE stage = 'main' "
                                     "AND (valid = 1 OR category = 'judge')")
        reasons = ledger.rows("SELECT DISTINCT category FROM examples WHERE stage = 'judge'")
    assert retried > 0 and left == 0 and scored == []
    assert judged == valid_before
    assert reasons and {r["category"] for r in reasons} <= {"not_json", "judge_answer"}


def test_no_example_is_exported_unscored_and_the_sources_failures_are_retried_while_judging(tmp_path: Path):
    """A judge request that ends for good without scores (its attempts spent) leaves the examples it showed
    rejected as not scored, which a top-up of the source makes up; and what fails in those top-ups is retried."""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.1, malformed_rate=0.3, seed=5))
    job = judged_job(tmp_path, max_attempts="2", max_top_ups="6", overgeneration="1.2")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode in (0, 3), done.stdout + done.stderr
    keys = {f"{line['_provenance']['custom_id']}#{line['_provenance']['position']}" for line in exported(workspace)}
    with Ledger.open(workspace / "ledger.db") as ledger:
        passed = {row["example"] for row in ledger.rows("SELECT example FROM judgments WHERE passed = 1")}
        unscored = ledger.scalar("SELECT count(*) FROM examples WHERE reason LIKE 'Not scored: judge request %'")
        spent = ledger.rows(
            "SELECT variant, count(*) AS n FROM requests WHERE stage = 'main' GROUP BY variant HAVING "
            "max(CASE WHEN status = 'invalid' THEN 1 ELSE 0 END) = 1 AND sum(status != 'retried') = 1")
        first_top_up = ledger.scalar("SELECT min(attempt) FROM requests WHERE stage = 'main' AND variant >= 66")
        retried_top_ups = ledger.scalar("SELECT count(*) FROM requests WHERE stage = 'main' AND status = 'retried' "
                                        "AND attempt >= ?", [first_top_up])
    assert keys and keys <= passed  # every exported example was scored, and passed
    assert unscored > 0
    assert all(row["n"] == 2 for row in spent)  # a source request left invalid used both its attempts
    assert retried_top_ups > 0


@pytest.mark.parametrize(("stage", "message"), [
    ('name = "judge"\nkind = "judge"\ntemplate = "judge.j2"',
     "a judge stage scores the examples of an earlier stage"),
    ('name = "judge"\nkind = "judge"\nfrom = "main"\ntemplate = "judge.j2"\ntarget = 10', "has no target of its own"),
    ('name = "more"\nfrom = "main"\nthreshold = 5', "threshold applies to a judge stage"),
    ('name = "judge"\nkind = "judge"\nfrom = "main"\ntemplate = "judge.j2"\nthreshold = 11', "threshold"),
    ('name = "judge"\nkind = "judge"\nfrom = "main"\ntemplate = "judge.j2"\n\n[[stages]]\nname = "later"\n'
     'from = "judge"', "names a judge stage, which makes no examples"),
    ('name = "more"\nfrom = "main"\ntemplate = "prompt.j2"\n\n[[stages]]\nname = "judge"\nkind = "judge"\n'
     'from = "main"\ntemplate = "judge.j2"', "stage 'more' takes the examples of 'main' before its judge 'judge'"),
    ('name = "judge"\nkind = "judge"\nfrom = "main"\ntemplate = "prompt.j2"',
     "template variable 'include_errors' is not defined"),  # a judge's template has no axis values
])
def test_a_judge_stage_written_wrong_is_one_error_line(tmp_path: Path, stage: str, message: str):
    job = judged_job(tmp_path)
    toml = job / "job.toml"
    head = toml.read_text(encoding="utf-8").split("[[stages]]")[0]
    toml.write_text(head + '[[stages]]\nname = "main"\n\n[[stages]]\n' + stage + "\n", encoding="utf-8")
    done = batchgen(fresh_workspace(tmp_path), "plan", str(job))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], done.stderr


def test_preview_of_a_judge_stage_points_to_the_stage_it_judges(tmp_path: Path):
    job = judged_job(tmp_path)
    done = batchgen(fresh_workspace(tmp_path), "preview", str(job), "--stage", "judge")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: Stage 'judge' of job 'task_api' is a judge stage: it scores the examples of stage 'main', so "
        f"preview that one (--stage main); 'batchgen plan {job}' prices the judge"]


@pytest.fixture(scope="module")
def uninterrupted_judge(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The dataset of a judged run that nothing interrupted (the judge's rejections made up by a top-up)."""
    parent = tmp_path_factory.mktemp("judged")
    workspace = fresh_workspace(parent, config(judge_low_rate=0.2))
    done = batchgen(workspace, "run", str(judged_job(parent)), "--quiet")
    assert done.returncode == 0, done.stderr
    return dataset(workspace)


@pytest.mark.parametrize("point", ["ingest:2", "create:3", "ingest:4"])
def test_a_judged_run_killed_while_judging_then_run_again(point: str, uninterrupted_judge: bytes, tmp_path: Path):
    """ingest:2 is inside the judge's first collection, create:3 the top-up of "main" it asks for, ingest:4 the
    judge's second round: run again, nothing is scored twice or lost, and the dataset is the same."""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.2))
    job = judged_job(tmp_path)
    killed = batchgen(workspace, "run", str(job), "--quiet", BATCHGEN_CRASH_AT=point)
    assert killed.returncode == -9, f"the run was not killed at {point}: {killed.stderr}"
    again = batchgen(workspace, "run", str(job), "--quiet")
    assert again.returncode == 0, again.stderr
    assert_no_duplicate_batches(workspace)
    assert_one_final_outcome_each(workspace)
    check = batchgen(workspace, "ledger", "check")
    assert check.returncode == 0, check.stdout
    assert dataset(workspace) == uninterrupted_judge


def test_a_judge_without_a_schema_is_read_from_the_json_it_writes(tmp_path: Path):
    """structured_output = "json_object": the judge's requests carry no schema, and its answers are still read."""
    workspace = fresh_workspace(tmp_path, config(judge_low_rate=0.2))
    job = judged_job(tmp_path, max_top_ups="0")
    toml = job / "job.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace('structured_output = "json_schema"',
                                                             'structured_output = "json_object"'), encoding="utf-8")
    done = batchgen(workspace, "run", str(job), "--quiet")
    assert done.returncode in (0, 3), done.stderr
    shown = judge_requests(workspace)
    assert shown and all(json.loads(line)["body"]["response_format"] == {"type": "json_object"}
                         for path in (workspace / "shards" / "task_api" / "judge").rglob("shard-0*[0-9].jsonl")
                         for line in path.read_text(encoding="utf-8").splitlines())
    with Ledger.open(workspace / "ledger.db") as ledger:
        judged = ledger.scalar("SELECT count(*) FROM judgments")
        before = ledger.scalar("SELECT count(*) FROM examples WHERE stage = 'main' "
                               "AND (valid = 1 OR category = 'judge')")
        rejected = ledger.scalar("SELECT count(*) FROM examples WHERE category = 'judge'")
    assert judged == before == sum(len(examples) for examples in shown.values()) and 0 < rejected < judged
