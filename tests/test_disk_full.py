"""Writes the disk refuses: one `Error:` line that says what ran out, exit status 1, nothing half-written and nothing
recorded that is not on disk; the same command run again once there is room gives the dataset of a run that never
met a full disk.

A full disk is real here: the CLI runs in a user and mount namespace (`unshare`) where a small tmpfs is mounted over
the one folder under test (the shards, the result files, the ledger's folder, the dataset's folder, the embedded
emulator's state, the state of `batchgen serve`) and filled up; the rest of the workspace stays on the ordinary disk.
Where unshare cannot do that the tests skip. The file size limit (EFBIG) is real too: RLIMIT_FSIZE in the child,
which works everywhere. A disk quota (EDQUOT) needs quotas that only root can set up, so its wording is checked on
the error itself.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from workspaces import ROOT, TASK_API, batchgen, dataset, env_for, fresh_workspace

from batchgen.disk import write_error
from batchgen.ledger import Ledger

FILLER = ".filler"
AGAIN = "free some space and run the same command again"


@dataclass(frozen=True)
class Step:
    """One command run on the small disk: its exit status and output, and the files it left there."""

    returncode: int
    stdout: str
    stderr: str
    left: list[str]  # paths relative to the small disk, the filler aside


@pytest.fixture(scope="session")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless this machine lets an ordinary user mount a tmpfs in a user namespace of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = tmp_path_factory.mktemp("probe")
    tried = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", str(probe)],
                           capture_output=True, text=True, timeout=60)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {tried.stderr.strip()}")


def cli(*args: str | Path) -> str:
    """The shell words of `python -m batchgen ARGS`."""
    return shlex.join([sys.executable, "-m", "batchgen", *map(str, args)])


def fill(disk: Path, leave_kb: int = 0) -> str:
    """Fill the small disk to the brim, then give `leave_kb` KB back."""
    filler = shlex.quote(str(disk / FILLER))
    return f"dd if=/dev/zero of={filler} bs=4k 2>/dev/null; truncate -s -{leave_kb}K {filler}"


def free(disk: Path) -> str:
    return f"rm {shlex.quote(str(disk / FILLER))}"


def on_a_small_disk(disk: Path, workspace: Path, *steps: str, **env: str) -> list[Step]:
    """Mount a 2 MB tmpfs over `disk` in a namespace of its own and run the shell `steps` there, one after another.

    The tmpfs (and whatever is on it) goes when the namespace ends; each step's output and the files it left on the
    disk are kept outside it."""
    out = Path(tempfile.mkdtemp(prefix="steps-", dir=disk.parent))
    folder = shlex.quote(str(disk))
    lines = [f"mount -t tmpfs -o size=2m tmpfs {folder} || exit 97"]
    for n, step in enumerate(steps):
        kept = shlex.quote(str(out / str(n)))
        lines.append(f"{{ {step} ; }} >{kept}.out 2>{kept}.err; echo $? >{kept}.rc")
        lines.append(f"find {folder} -type f ! -name {FILLER} -printf '%P\\n' | sort >{kept}.left")
    ran = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "\n".join(lines)],
                         capture_output=True, text=True, env=env_for(workspace, **env), cwd=ROOT, timeout=600)
    assert ran.returncode == 0, ran.stderr
    return [Step(int((out / f"{n}.rc").read_text()), (out / f"{n}.out").read_text(), (out / f"{n}.err").read_text(),
                 (out / f"{n}.left").read_text().split()) for n in range(len(steps))]


def assert_one_error_line(step: Step | subprocess.CompletedProcess[str], message: str) -> None:
    assert step.returncode == 1, step.stderr
    assert "Traceback" not in step.stderr
    assert step.stderr == f"Error: {message}\n"
    assert step.stdout == ""


def ledger_rows(step: Step) -> dict[str, int]:
    """The row counts of `batchgen ledger status --json`."""
    assert step.returncode == 0, step.stderr
    return dict(json.loads(step.stdout)["rows"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace of a run on an ordinary disk: its dataset is what every resumed run must give."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("finished"))
    batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    return workspace


def submitted(tmp_path: Path) -> tuple[Path, str]:
    """A workspace whose one batch, the plan's, has ended and is not collected yet; and the batch's id."""
    workspace = fresh_workspace(tmp_path)
    batchgen(workspace, "submit", str(TASK_API), check=True)
    batchgen(workspace, "status", "task_api", "--watch", "--interval", "0.1", check=True)  # polls, never collects
    with Ledger.open(workspace / "ledger.db", read_only=True) as ledger:
        (batch,) = ledger.rows("SELECT id, status, collected FROM batches")
    assert batch["status"] == "completed" and not batch["collected"]
    return workspace, batch["id"]


# -- compile ----------------------------------------------------------------------------------------------------


def shard_files(workspace: Path) -> list[str]:
    """The files of a compile, relative to the workspace's shards folder."""
    shards = workspace / "shards"
    return sorted(str(p.relative_to(shards)) for p in shards.rglob("*") if p.is_file())


def plan_shard_files(workspace: Path) -> list[str]:
    """The files of the plan's compile (attempt 1, `a1/`), without those of a top-up compiled after a collect."""
    return [name for name in shard_files(workspace) if "/a1/" in name]


def test_compile_on_a_full_disk(namespaces: None, finished: Path, tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    disk, kept = workspace / "shards", tmp_path / "kept"
    disk.mkdir()
    steps = on_a_small_disk(disk, workspace, fill(disk), cli("compile", TASK_API, "--workspace", workspace),
                            free(disk), cli("compile", TASK_API, "--workspace", workspace),
                            f"cp -a {shlex.quote(str(disk))} {shlex.quote(str(kept))}")
    full, again = steps[1], steps[3]
    expected = plan_shard_files(finished)
    assert expected and expected != shard_files(finished)  # the finished run compiled a top-up too
    shard = next(name for name in expected if name.endswith("shard-00000.jsonl"))
    assert_one_error_line(full, f"No space left on device while writing shard {disk / shard}: {AGAIN}")
    assert full.left == []  # no temporary file, no shard without its manifest
    assert again.returncode == 0, again.stderr
    assert again.left == expected
    for name in expected:  # byte for byte the shards of a compile that never met a full disk
        assert (kept / name).read_bytes() == (finished / "shards" / name).read_bytes(), name


def test_a_run_whose_shards_do_not_fit_records_none(namespaces: None, finished: Path, tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    disk = workspace / "shards"
    disk.mkdir()
    steps = on_a_small_disk(disk, workspace, fill(disk), cli("run", TASK_API, "--quiet"),
                            cli("ledger", "status", "--json"), free(disk), cli("run", TASK_API, "--quiet"),
                            cli("ledger", "check"))
    full, rows, again, check = steps[1], ledger_rows(steps[2]), steps[4], steps[5]
    shard = next(name for name in plan_shard_files(finished) if name.endswith("shard-00000.jsonl"))
    assert_one_error_line(full, f"No space left on device while writing shard {disk / shard}: {AGAIN}")
    assert full.left == []
    assert rows["jobs"] == 1 and rows["shards"] == rows["requests"] == rows["batches"] == 0
    assert again.returncode == 0, again.stderr
    assert check.returncode == 0, check.stdout
    assert dataset(workspace) == dataset(finished)


# -- collect ----------------------------------------------------------------------------------------------------


TOP_UP = "1 shard(s) to submit: batchgen submit task_api"  # what the collect of the plan's batch ends with
# What the user does then: submit the top-up (of the cells near-duplicates and the date check left below their
# share), wait for its batch and collect it.
THE_TOP_UP = (cli("submit", "task_api"), cli("status", "task_api", "--watch", "--interval", "0.1"),
              cli("collect", "task_api"))


def test_collect_when_the_result_files_do_not_fit(namespaces: None, finished: Path, tmp_path: Path) -> None:
    workspace, batch = submitted(tmp_path)
    disk = workspace / "results"
    steps = on_a_small_disk(disk, workspace, fill(disk), cli("collect", "task_api"), cli("ledger", "status", "--json"),
                            free(disk), cli("collect", "task_api"), *THE_TOP_UP, cli("ledger", "check"))
    full, rows, again, topped_up, check = steps[1], ledger_rows(steps[2]), steps[4], steps[7], steps[8]
    target = disk / "task_api" / f"{batch}.output.jsonl"
    assert_one_error_line(full, f"No space left on device while writing result file {target}: {AGAIN}")
    assert full.left == []  # no .part file
    assert rows["results"] == rows["examples"] == 0
    assert again.returncode == 0 and TOP_UP in again.stdout, again.stderr
    assert again.left == [f"task_api/{batch}.output.jsonl"]
    assert all(step.returncode == 0 for step in steps[5:8]), [step.stderr for step in steps[5:8]]
    assert "done; dataset" in topped_up.stdout and len(topped_up.left) == 2 and again.left[0] in topped_up.left
    assert check.returncode == 0, check.stdout
    assert dataset(workspace) == dataset(finished)


def test_collect_when_the_ledger_does_not_fit(namespaces: None, finished: Path, tmp_path: Path) -> None:
    """SQLite's "database or disk is full" at the collect's COMMIT: the transaction is rolled back whole."""
    workspace, batch = submitted(tmp_path)
    disk = tmp_path / "ledger-disk"
    disk.mkdir()
    ledger = disk / "ledger.db"
    steps = on_a_small_disk(disk, workspace, f"cp {shlex.quote(str(workspace / 'ledger.db'))} {shlex.quote(str(disk))}",
                            fill(disk, leave_kb=128), cli("collect", "task_api"), free(disk),
                            cli("ledger", "status", "--json"), cli("collect", "task_api"), *THE_TOP_UP,
                            cli("ledger", "check"), BATCHGEN_LEDGER=str(ledger))
    full, rows, again, topped_up, check = steps[2], ledger_rows(steps[4]), steps[5], steps[8], steps[9]
    assert_one_error_line(full, f"No space left on device while writing the ledger {ledger}: {AGAIN}")
    assert (workspace / "results" / "task_api" / f"{batch}.output.jsonl").is_file()  # downloaded, then refused
    assert rows["results"] == rows["examples"] == 0 and rows["batches"] == 1
    assert again.returncode == 0 and TOP_UP in again.stdout, again.stderr
    assert all(step.returncode == 0 for step in steps[6:9]), [step.stderr for step in steps[6:9]]
    assert "done; dataset" in topped_up.stdout
    assert check.returncode == 0, check.stdout
    assert dataset(workspace) == dataset(finished)


# -- export -----------------------------------------------------------------------------------------------------


def test_export_on_a_full_disk(namespaces: None, finished: Path, tmp_path: Path) -> None:
    disk, kept = tmp_path / "disk", tmp_path / "kept.jsonl"
    disk.mkdir()
    target = disk / "train.jsonl"
    steps = on_a_small_disk(disk, finished, fill(disk), cli("export", "task_api", "-o", target, "--provenance",
                            "sidecar"), free(disk), cli("export", "task_api", "-o", target),
                            f"cp {shlex.quote(str(target))} {shlex.quote(str(kept))}")
    full, again = steps[1], steps[3]
    assert_one_error_line(full, f"No space left on device while writing dataset {target}: {AGAIN}")
    assert full.left == []  # neither the dataset, nor its sidecar, nor its card, nor a temporary file
    assert again.returncode == 0 and again.left == ["README.md", "train.jsonl"], again.stderr  # with its card
    assert kept.read_bytes() == (finished / "datasets" / "task_api.sharegpt.jsonl").read_bytes()


def test_a_dataset_that_fits_without_its_card_is_not_written(namespaces: None, finished: Path,
                                                              tmp_path: Path) -> None:
    """The dataset's temporary file fits, its card's does not: neither replaces the files of the export before."""
    bare = tmp_path / "bare" / "train.jsonl"
    batchgen(finished, "export", "task_api", "-o", str(bare), "--provenance", "none", check=True)
    room_kb = -(-bare.stat().st_size // 4096) * 4 + 4  # the new dataset's pages and one more: the card needs two
    assert (bare.parent / "README.md").stat().st_size > 4096
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    target = disk / "train.jsonl"
    steps = on_a_small_disk(disk, finished, cli("export", "task_api", "-o", target),
                            f"cp -a {shlex.quote(str(disk))} {shlex.quote(str(kept))}", fill(disk, leave_kb=room_kb),
                            cli("export", "task_api", "-o", target, "--provenance", "none"),
                            f"cmp {shlex.quote(str(kept / 'train.jsonl'))} {shlex.quote(str(target))} && "
                            f"cmp {shlex.quote(str(kept / 'README.md'))} {shlex.quote(str(disk / 'README.md'))}")
    before, full, same = steps[0], steps[3], steps[4]
    assert before.returncode == 0 and before.left == ["README.md", "train.jsonl"], before.stderr
    assert_one_error_line(full, f"No space left on device while writing dataset {target}: {AGAIN}")
    assert full.left == ["README.md", "train.jsonl"]  # the export before, and no temporary file
    assert same.returncode == 0, same.stdout  # byte for byte


def test_a_job_whose_dataset_does_not_fit_is_not_done(namespaces: None, finished: Path, tmp_path: Path) -> None:
    workspace = fresh_workspace(tmp_path)
    disk, kept = workspace / "datasets", tmp_path / "kept"
    disk.mkdir()
    kept.mkdir()
    steps = on_a_small_disk(disk, workspace, fill(disk), cli("run", TASK_API, "--quiet"),
                            cli("show", "task_api", "--json"), free(disk), cli("run", TASK_API, "--quiet"),
                            f"cp -a {shlex.quote(str(disk))} {shlex.quote(str(kept / 'datasets'))}")
    full, shown, again = steps[1], json.loads(steps[2].stdout), steps[4]
    target = disk / "task_api.sharegpt.jsonl"
    assert_one_error_line(full, f"No space left on device while writing dataset {target}: {AGAIN}")
    assert full.left == []
    assert shown["status"] == "active" and shown["dataset"] is None  # no dataset recorded that is not there
    assert again.returncode == 0 and again.left == ["task_api.sharegpt.README.md", target.name], again.stderr
    assert dataset(kept) == dataset(finished)


# -- the emulator's state -----------------------------------------------------------------------------------------


def temporary(names: list[str]) -> list[str]:
    """The temporary files among `names`: an atomic write's `.<name>.tmp`, an upload's spool `.upload-<token>`."""
    return [name for name in names if name.endswith(".tmp") or Path(name).name.startswith(".upload-")]


def batch_ids(workspace: Path, attempt: int | None = None) -> list[str]:
    """The ids of a workspace's batches, by their shard (of one attempt: 1 is the plan's)."""
    with Ledger.open(workspace / "ledger.db", read_only=True) as ledger:
        return [row["id"] for row in ledger.rows("SELECT b.id FROM batches b JOIN shards s ON s.id = b.shard_id "
                                                 "WHERE ? IS NULL OR s.attempt = ? ORDER BY s.id", [attempt, attempt])]


def room_in_the_emulator(finished: Path, room: str) -> int:
    """KB to leave on the emulator's disk so that it gets as far as `room` says, from the sizes of a finished run:
    those of the plan's shard and its batch's answers, the first upload and the first answers of a run."""
    (batch,) = batch_ids(finished, attempt=1)
    shard = (finished / "shards" / next(name for name in plan_shard_files(finished)
                                        if name.endswith("shard-00000.jsonl"))).stat().st_size // 1024
    answers = (finished / "results" / "task_api" / f"{batch}.output.jsonl").stat().st_size // 1024
    assert shard > 64 and answers > 128  # the upload needs more than the start, the answers more than the margin
    return {"nothing": 0, "its start": 32, "the upload": shard + 64}[room]


@pytest.mark.parametrize("room", ["nothing", "its start", "the upload"])
def test_a_run_whose_emulator_state_does_not_fit(namespaces: None, finished: Path, tmp_path: Path, room: str) -> None:
    """Whether the embedded emulator cannot start, cannot store the upload (a 500) or cannot record the batch's
    answers (its batch waits; reading it is a 500): one line naming the workspace's emulator state, at once, and the
    same command run once there is room ends with the dataset of a run that never met a full disk."""
    workspace = fresh_workspace(tmp_path)
    disk = workspace / "emulator"
    config = shlex.quote((disk / "config.json").read_text())
    steps = on_a_small_disk(disk, workspace, f"printf %s {config} >{shlex.quote(str(disk / 'config.json'))}",
                            fill(disk, room_in_the_emulator(finished, room)), cli("run", TASK_API, "--quiet"),
                            f"find {shlex.quote(str(disk))} -name '*.part' -size +0 -printf '%P\\n'", free(disk),
                            cli("run", TASK_API, "--quiet"), cli("ledger", "check"), cli("ledger", "status", "--json"))
    full, parts, again, check, rows = steps[2], steps[3], steps[5], steps[6], ledger_rows(steps[7])
    assert_one_error_line(full, f"No space left on device while writing the embedded emulator's state {disk}: {AGAIN}")
    assert temporary(full.left) == [] and parts.stdout == ""  # no temporary file, no answer beyond what is recorded
    assert again.returncode == 0 and "done" in again.stdout, again.stderr
    assert check.returncode == 0, check.stdout
    # the plan's batch (the first try's, if it got one) and the top-up's, as in the finished run: none submitted twice
    assert rows["batches"] == rows["shards"] == len(batch_ids(workspace)) == len(batch_ids(finished)) == 2
    with Ledger.open(workspace / "ledger.db", read_only=True) as ledger:
        assert ledger.rows("SELECT shard_id FROM batches GROUP BY shard_id HAVING count(*) != 1") == []
    assert dataset(workspace) == dataset(finished)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """The shell words of a `batchgen serve` in the background on a small disk, and of a client's calls to it."""

    def __init__(self, disk: Path, kept: Path) -> None:
        self.disk, self.kept, self.port = disk, kept, free_port()
        kept.mkdir()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "batchgen", "serve", "--state", str(self.disk), "--port", str(self.port),
                "--log-level", "info", "--validation-seconds", "0", "--line-seconds", "0", "--finalizing-seconds", "0"]

    def start(self) -> str:
        return f"{shlex.join(self.command())} & echo $! >{shlex.quote(str(self.kept / 'pid'))}"

    def call(self, *command: str | int) -> str:
        """A client call (tests/serve_client.py), which prints its answer as one JSON line."""
        return shlex.join([sys.executable, str(ROOT / "tests" / "serve_client.py"), str(self.port), str(self.kept),
                           *map(str, command)])

    def stop(self) -> str:
        pid = f"$(cat {shlex.quote(str(self.kept / 'pid'))})"
        return f"kill -TERM {pid} && wait {pid}"


def answered(step: Step) -> dict[str, Any]:
    assert step.returncode == 0, step.stderr
    return dict(json.loads(step.stdout))


def test_serve_refuses_an_upload_while_its_disk_is_full(namespaces: None, tmp_path: Path) -> None:
    disk = tmp_path / "state"
    disk.mkdir()
    serve = Serve(disk, tmp_path / "kept")
    steps = on_a_small_disk(disk, tmp_path, serve.start(), serve.call("wait"), fill(disk), serve.call("upload", 200),
                            serve.call("files"), free(disk), serve.call("upload", 200), serve.call("files"),
                            serve.stop())
    log, full, listed, again, listed_again, stopped = steps[0], steps[3], steps[4], steps[6], steps[7], steps[8]
    assert answered(steps[1])["status"] == 200
    refused = answered(full)
    assert refused["status"] == 500 and refused["should_retry"] == "false"
    assert refused["error"] == {"message": "The emulator's disk is full (No space left on device): nothing of this "
                                           "request was stored. Free some space on the emulator's disk and try again.",
                                "type": "server_error", "param": None, "code": "emulator_disk_full"}
    assert full.left == steps[2].left and temporary(full.left) == []  # the spool went, nothing was added
    assert answered(listed) == {"status": 200, "body": []}
    stored = answered(again)
    assert stored["status"] == 200 and answered(listed_again)["body"] == [stored["body"]]
    assert stopped.returncode == 0, stopped.stderr
    assert "Traceback" not in log.stderr, log.stderr
    (line,) = [line for line in log.stderr.splitlines() if "No space left on device" in line]
    assert line.startswith("WARNING:") and "POST /v1/files answered 500: No space left on device while writing " \
        f"{disk}/files/.upload-" in line and line.endswith("; nothing of it was stored")


def test_serve_resumes_a_batch_once_its_disk_has_room(namespaces: None, tmp_path: Path) -> None:
    """A batch whose answers do not fit waits, its reads answering 500, and goes on once there is room: every line
    answered exactly once, the counts those of the rows."""
    disk = tmp_path / "state"
    disk.mkdir()
    serve = Serve(disk, tmp_path / "kept")
    steps = on_a_small_disk(disk, tmp_path, serve.start(), serve.call("wait"), serve.call("upload", 300),
                            fill(disk, leave_kb=16), serve.call("create"), serve.call("progress"), free(disk),
                            serve.call("progress"), serve.call("output"), serve.stop())
    log, created, waiting, ended, output, stopped = steps[0], steps[4], steps[5], steps[7], steps[8], steps[9]
    assert answered(steps[2])["status"] == 200
    assert answered(created)["status"] == 200  # the batch itself fits
    stalled = answered(waiting)
    assert stalled["status"] == 500 and stalled["error"]["code"] == "emulator_disk_full"
    assert stalled["error"]["message"] == ("The emulator's disk is full (No space left on device): the progress of "
                                           "batches cannot be saved until there is room. Free some space on the "
                                           "emulator's disk and try again.")
    assert temporary(waiting.left) == []
    batch = answered(ended)["body"]
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 300, "completed": 300, "failed": 0}
    assert answered(output)["body"] == {f"req-{i}": 1 for i in range(300)}
    assert stopped.returncode == 0, stopped.stderr
    assert "Traceback" not in log.stderr, log.stderr
    (line,) = [line for line in log.stderr.splitlines() if "No space left on device" in line]
    assert line.startswith("WARNING:") and line.endswith(
        f"batches wait for disk space: No space left on device while writing {disk}/batches/{batch['id']}/output.part;"
        " trying again every 2 s")
    assert "batches go on: their progress is written again" in log.stderr


# -- the file size limit, a quota ---------------------------------------------------------------------------------


def test_serve_at_the_file_size_limit(tmp_path: Path) -> None:
    """EFBIG on an upload's spool: the 500 names the limit, the spool goes, a smaller file is stored."""
    serve = Serve(tmp_path / "state", tmp_path / "kept")
    process = subprocess.Popen(serve.command(), stderr=subprocess.PIPE, text=True,
                               env=env_for(tmp_path), cwd=ROOT, preexec_fn=lambda: limited(65536))
    try:
        assert answered(client_call(serve, "wait"))["status"] == 200
        refused, stored = answered(client_call(serve, "upload", 1000)), answered(client_call(serve, "upload", 10))
        listed = answered(client_call(serve, "files"))
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=60)
    assert refused["status"] == 500 and refused["error"]["code"] == "emulator_file_too_large"
    assert refused["error"]["message"] == ("The emulator reached the file size limit (File too large): nothing of "
                                           "this request was stored. Raise the emulator's file size limit "
                                           "(ulimit -f) and try again.")
    assert stored["status"] == 200 and listed["body"] == [stored["body"]]
    assert temporary([str(p.relative_to(serve.disk)) for p in serve.disk.rglob("*") if p.is_file()]) == []
    assert process.returncode == 0 and "Traceback" not in log, log
    assert len([line for line in log.splitlines() if "File too large" in line]) == 1, log


def client_call(serve: Serve, *command: str | int) -> Step:
    """A client call run here, outside any namespace."""
    done = subprocess.run(shlex.split(serve.call(*command)), capture_output=True, text=True, timeout=120)
    return Step(done.returncode, done.stdout, done.stderr, [])


def limited(size: int) -> None:
    """In the child, before exec: files may grow to `size` bytes; a longer write fails with EFBIG (no SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_the_file_size_limit(finished: Path, tmp_path: Path) -> None:
    """EFBIG on a shard and on a dataset; and on a ledger backup, where SQLite says only "disk I/O error"."""
    runs = {}
    for name, args in {"compile": ("compile", str(TASK_API), "--workspace", str(tmp_path / "ws")),
                       "export": ("export", "task_api", "-o", str(tmp_path / "out" / "train.jsonl")),
                       "backup": ("ledger", "backup", str(tmp_path / "out" / "copy.db"))}.items():
        runs[name] = subprocess.run([sys.executable, "-m", "batchgen", *args], capture_output=True, text=True,
                                    env=env_for(finished), cwd=ROOT, timeout=300, preexec_fn=lambda: limited(65536))
    limit = "raise the file size limit (ulimit -f) and run the same command again"
    shard = next((tmp_path / "ws" / "shards").rglob("a1"))
    assert_one_error_line(runs["compile"], f"File too large while writing shard {shard / 'shard-00000.jsonl'}: {limit}")
    assert_one_error_line(runs["export"], f"File too large while writing dataset {tmp_path / 'out' / 'train.jsonl'}: "
                                          f"{limit}")
    assert_one_error_line(runs["backup"], f"Cannot write the backup {tmp_path / 'out' / 'copy.db'}: disk I/O error "
                          "(SQLITE_IOERR_WRITE); if its disk is full, over quota or at the file size limit "
                          "(ulimit -f), make room and run the same command again")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-written anywhere


@pytest.mark.parametrize(("code", "message"), [
    (errno.ENOSPC, f"No space left on device while writing dataset x.jsonl: {AGAIN}"),
    (errno.EDQUOT, "Disk quota exceeded while writing dataset x.jsonl: free some space (or have the quota raised) "
                   "and run the same command again"),
    (errno.EFBIG, "File too large while writing dataset x.jsonl: raise the file size limit (ulimit -f) and run "
                  "the same command again"),
    (errno.EIO, "Cannot write dataset x.jsonl: Input/output error; choose another file"),
])
def test_each_way_a_disk_says_no_is_one_line(code: int, message: str) -> None:
    assert str(write_error(OSError(code, os.strerror(code)), "dataset x.jsonl", "choose another file")) == message


# -- a folder that cannot be made -------------------------------------------------------------------------------


def blocked_folder(tmp_path: Path, how: str) -> Path:
    """A folder that cannot be made: under a regular file, or in a folder without write permission."""
    if how == "under a file":
        (tmp_path / "notes").write_text("a file, not a folder\n")
        return tmp_path / "notes" / "out"
    (tmp_path / "locked").mkdir(mode=0o500)
    return tmp_path / "locked" / "out"


def without_root(how: str) -> list[str]:
    """What runs a command so that a folder's mode holds for it: as is for an ordinary user; for root, in a user
    namespace that maps no user (root then has no power over the files outside it), else the test skips."""
    if how != "no permission" or os.geteuid() != 0:
        return []
    tried = subprocess.run(["unshare", "--user", "true"], capture_output=True) if shutil.which("unshare") else None
    if tried is None or tried.returncode != 0:
        pytest.skip("root may write into any folder, and no user namespace is at hand to run it as another user")
    return ["unshare", "--user"]


@pytest.mark.parametrize("how", ["under a file", "no permission"])
@pytest.mark.parametrize(("command", "name", "what", "fix"), [
    ("export", "train.jsonl", "dataset", "choose another file with -o"),
    ("backup", "copy.db", "the backup", "choose another path"),
])
def test_a_folder_that_cannot_be_made(finished: Path, tmp_path: Path, how: str, command: str, name: str, what: str,
                                      fix: str) -> None:
    folder = blocked_folder(tmp_path, how)
    target = folder / name
    before = sorted(tmp_path.rglob("*"))
    args = ("export", "task_api", "-o", str(target)) if command == "export" else ("ledger", "backup", str(target))
    done = subprocess.run([*without_root(how), sys.executable, "-m", "batchgen", *args], capture_output=True,
                          text=True, env=env_for(finished), cwd=ROOT, timeout=300)
    why = f"{tmp_path / 'notes'} is a file, not a folder" if how == "under a file" else "Permission denied"
    assert_one_error_line(done, f"Cannot create folder {folder} for {what} {target}: {why}; {fix}")
    assert sorted(tmp_path.rglob("*")) == before
