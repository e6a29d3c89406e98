"""What `batchgen run` shows while it works: a live display on a terminal of 80 columns that never wraps and leaves
the summary a line of its own, plain lines (one per change) without a terminal, nothing with --quiet or --json, the
figures of running batches as the provider counts them, and a Ctrl-C hint that resumes the same run."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from workspaces import ROOT, TASK_API, batchgen, env_for, remote_state

from batchgen.emulator import EmulatorControl, start_embedded
from batchgen.ledger import Ledger
from batchgen.progress import live_lines, plain_line
from batchgen.run.tick import JobProgress, StageProgress

LONG_NAME = "a_job_whose_name_is_as_long_as_allowed_x"  # 40 characters, the most a job name may have
FINAL_LINE = ("task_api done; stage main: 67/67 requests; batches: 2 completed; 601/500 valid; spent $0.0168021, "
              "budget $0.15")


def emulator_config(workspace: Path, **config: object) -> Path:
    (workspace / "emulator").mkdir(parents=True, exist_ok=True)
    (workspace / "emulator" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return workspace


def job_named(tmp_path: Path, name: str, source: Path = ROOT / "jobs" / "evol_task_api") -> Path:
    """A copy of a job directory under another name (the name comes from the directory)."""
    target = tmp_path / name
    shutil.copytree(source, target)
    toml = (target / "job.toml").read_text(encoding="utf-8")
    (target / "job.toml").write_text(re.sub(r'(?m)^name = ".*"$', "", toml, count=1), encoding="utf-8")
    return target


# -- on a terminal ------------------------------------------------------------------------------------------------


class Terminal:
    """The screen of a terminal `width` columns wide, fed the bytes a program wrote to it: enough of a VT100 for
    what the display sends (text, CR, LF, cursor up, erase line, colours, cursor shown or hidden). Any other control
    sequence fails the test, so that nothing the screen cannot show goes unchecked. `wraps` counts the characters
    that did not fit on their line (the terminal moved them to the next one)."""

    CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")

    def __init__(self, width: int = 80) -> None:
        self.width, self.rows, self.row, self.col, self.wraps = width, [[]], 0, 0, 0
        self.cursor_shown = True

    def feed(self, text: str) -> None:
        at = 0
        while at < len(text):
            match = self.CSI.match(text, at)
            if match:
                self._control(*match.groups())
                at = match.end()
                continue
            self._char(text[at])
            at += 1

    def _control(self, arguments: str, command: str) -> None:
        if command == "m":
            return
        if command == "A":
            self.row = max(0, self.row - int(arguments or 1))
        elif command == "K" and arguments == "2":
            self.rows[self.row] = []
        elif command in "hl" and arguments == "?25":
            self.cursor_shown = command == "h"
        else:
            raise AssertionError(f"a control sequence the display should not send: ESC[{arguments}{command}")

    def _char(self, char: str) -> None:
        if char == "\r":
            self.col = 0
        elif char == "\n":
            self.row += 1
            self.rows += [[] for _ in range(self.row + 1 - len(self.rows))]
        else:
            assert char.isprintable(), f"a control character on screen: {char!r}"
            cells = 2 if unicodedata.east_asian_width(char) in "WF" else 1
            if self.col + cells > self.width:
                self.wraps += 1
                self._char("\r")
                self._char("\n")
            line = self.rows[self.row]
            line += [" "] * (self.col - len(line))
            line[self.col:self.col + 1] = [char]
            self.col += cells

    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]


def run_in_terminal(workspace: Path, *args: str, width: int = 80,
                    interrupt_when: Callable[[str], bool] | None = None) -> tuple[int, str]:
    """`batchgen ARGS` with stdout and stderr on a pseudo-terminal `width` columns wide, as a person runs it (sent
    SIGINT, as Ctrl-C does, once `interrupt_when(what it wrote)` holds); its exit status and everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    env = env_for(workspace, COLUMNS=str(width), TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "batchgen", *args], stdin=subprocess.DEVNULL, stdout=follower,
                               stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    written, deadline = bytearray(), time.monotonic() + 300
    try:
        while True:
            assert time.monotonic() < deadline, written.decode("utf-8", "replace")
            if interrupt_when is not None and interrupt_when(written.decode("utf-8", "replace")):
                process.send_signal(signal.SIGINT)
                interrupt_when = None
            if not select.select([leader], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the program ended and closed its side
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    return process.wait(timeout=60), written.decode("utf-8")


def displayed_until_summary(written: str, summary: str) -> tuple[Terminal, int]:
    """The screen as the display left it, fed everything before `summary`; and where on it the summary starts."""
    before, found, _ = written.partition(summary)
    assert found, f"{summary!r} was never written"
    screen = Terminal()
    screen.feed(before)
    return screen, screen.row


def test_a_terminal_of_80_columns_shows_bars_that_never_wrap_and_the_summary_below_them(tmp_path):
    workspace = emulator_config(tmp_path / ".batchgen", line_seconds=0.005, validation_seconds=0,
                                finalizing_seconds=0.2)
    status, written = run_in_terminal(workspace, "run", str(job_named(tmp_path, LONG_NAME)))
    assert status == 0, written
    screen, summary_row = displayed_until_summary(written, f"Job {LONG_NAME}: done")
    assert screen.wraps == 0, "\n".join(screen.lines())
    assert screen.col == 0 and screen.cursor_shown, "the summary does not start a line of its own"
    display = [line for line in screen.lines()[:summary_row] if line]
    assert display[0].startswith(LONG_NAME) and "stage 4/4 edge_case" in display[0]
    for stage in ("simple", "moderate", "complex", "edge_case"):
        (bar,) = [line for line in display if line.startswith(f"  {stage} ")]
        assert re.search(r"  (\d+)/\1 requests  \d+/125 valid$", bar), bar
    assert display[-1].startswith("  spent $0.0") and display[-1].endswith("budget $0.15")
    whole = Terminal()
    whole.feed(written)
    assert whole.lines()[summary_row].startswith(f"Job {LONG_NAME}: done (stage edge_case, backend")


def test_an_error_after_the_display_is_one_line_of_its_own(tmp_path):
    """A budget that stops the run: the display said it waits for the budget (cut to 80 columns), the Error line
    comes below it."""
    workspace = emulator_config(tmp_path / ".batchgen", line_seconds=0.005, validation_seconds=0,
                                finalizing_seconds=0.2)
    job = job_named(tmp_path, "task_api", TASK_API)
    toml = (job / "job.toml").read_text(encoding="utf-8").replace("budget_usd = 0.15", "budget_usd = 0.01")
    (job / "job.toml").write_text(toml + "\n[limits]\nmax_lines = 10\n", encoding="utf-8")
    status, written = run_in_terminal(workspace, "run", str(job))
    assert status == 1, written
    screen, _ = displayed_until_summary(written, "Error: Budget $0.01 of job 'task_api' reached")
    assert screen.wraps == 0 and screen.col == 0 and screen.cursor_shown, "\n".join(screen.lines())
    assert any(line.startswith("  waiting: Budget $0.01") and line.endswith("\u2026") and len(line) == 80
               for line in screen.lines()), "\n".join(screen.lines())
    assert "Traceback" not in written


def test_ctrl_c_on_a_terminal_leaves_the_display_and_the_hint_below_it(tmp_path):
    workspace = emulator_config(tmp_path / ".batchgen", line_seconds=0.5, validation_seconds=0,
                                finalizing_seconds=0)
    status, written = run_in_terminal(workspace, "run", str(TASK_API), "--workspace", str(workspace),
                                      interrupt_when=lambda shown: "batches: 1 in_progress" in shown)
    assert status == 130, written
    screen, hint_row = displayed_until_summary(written, "Stopped. Batches keep running")
    assert screen.wraps == 0 and screen.col == 0 and screen.cursor_shown, "\n".join(screen.lines())
    assert [line for line in screen.lines()[:hint_row] if line][-1].startswith("  spent $0.00")
    assert "Traceback" not in written


# -- without a terminal -------------------------------------------------------------------------------------------


def test_without_a_terminal_one_plain_line_per_change(tmp_path):
    """A slow `finalizing` is polled several times with nothing new: it is written once."""
    workspace = emulator_config(tmp_path / ".batchgen", line_seconds=0.01, validation_seconds=0,
                                finalizing_seconds=1.5)
    done = batchgen(workspace, "run", str(TASK_API), check=True)
    lines = done.stderr.splitlines()
    assert lines and lines[-1] == FINAL_LINE, done.stderr
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", done.stderr), "a control character in the plain lines"
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False)), "a line repeated without a change"
    assert all(line.startswith("task_api ") for line in lines)
    with Ledger.open(workspace / "ledger.db") as ledger:
        polls = ledger.scalar("SELECT sum(polls) FROM batches")
    assert polls > len(lines), f"{polls} polls, {len(lines)} lines: the test saw no poll without a change"
    assert done.stdout.startswith("Job task_api: done")


def test_quiet_and_json_show_no_progress(tmp_path):
    workspace = emulator_config(tmp_path / ".batchgen", line_seconds=0.005, validation_seconds=0,
                                finalizing_seconds=0)
    as_json = batchgen(workspace, "run", str(TASK_API), "--json", check=True)
    assert json.loads(as_json.stdout)["status"] == "done" and as_json.stderr == ""
    quiet = batchgen(workspace, "run", str(TASK_API), "--quiet", check=True)
    assert quiet.stderr == "" and quiet.stdout.startswith("Job task_api: done")


# -- the figures --------------------------------------------------------------------------------------------------


def test_the_requests_of_a_running_batch_count_as_the_provider_counts_them(tmp_path):
    """Nothing is collected while the batch runs, yet its answered requests show: the emulator's clock stands
    still, a test moves it forward by 20 lines, and `collect` polls the batch."""
    workspace = emulator_config(tmp_path / ".batchgen", time_scale=0, line_seconds=1, validation_seconds=0,
                                finalizing_seconds=0, control=True)
    batchgen(workspace, "submit", str(TASK_API), "--poll-interval", "0.05", check=True)
    with start_embedded(workspace / "emulator") as emulator:
        EmulatorControl(emulator.base_url).advance(20)
    (batch,), _ = remote_state(workspace)
    counted = batch.request_counts.completed + batch.request_counts.failed
    assert batch.status == "in_progress" and 0 < counted < 55
    collected = batchgen(workspace, "collect", "task_api", "--json", check=True)
    (job,) = json.loads(collected.stdout)
    assert job["finished"] == 0  # nothing collected yet
    assert job["stages"] == [{"name": "main", "target": 500, "requests": 55, "answered": counted,
                              "batches": {"in_progress": 1}, "valid_examples": 0, "judged": None}]
    assert Decimal(job["budget_usd"]) == Decimal("0.15") and Decimal(job["committed_usd"]) > 0


def test_every_line_of_the_display_fits_its_width():
    """The layout alone, at the widths a terminal may have: the longest names, every batch status, a long wait."""
    stages = [StageProgress(f"stage_{n}_with_a_name", 125_000, 123_456, 99_999,
                            {"validating": 12, "in_progress": 34, "finalizing": 5, "cancelling": 1, "completed": 77,
                             "failed": 2, "expired": 3, "cancelled": 4}, 1_234_567) for n in range(4)]
    stages.append(StageProgress("later", 500))
    progress = JobProgress(LONG_NAME, "stage_2_with_a_name", "active", stages=stages,
                           spent_usd=Decimal("1234.567891234"), committed_usd=Decimal("99999.123456789"),
                           budget_usd=Decimal("100000"),
                           waiting_for_budget="Budget $100000.00 of job 'x' reached: " + "words " * 30)
    for width in (80, 60, 40):
        lines = live_lines(progress, width)
        assert len(lines) == 1 + 4 * 2 + 1 + 1 + 1
        assert all(line.cell_len <= width for line in lines), [(line.cell_len, line.plain) for line in lines]
        assert lines[-1].cell_len <= width - 2  # room for the ^C a terminal echoes after it
    at_80 = [line.plain for line in live_lines(progress, 80)]
    assert at_80[0] == f"{LONG_NAME} active \u00b7 stage 3/5 stage_2_with_a_name"
    assert at_80[2].strip() == ("batches: 12 validating, 34 in_progress, 5 finalizing, 1 cancelling, 77 completed, "
                                "2 failed, 3 expired, 4 cancelled")[:80 - 23 - 1] + "\u2026"
    assert re.fullmatch(r"  later +\u2500{12}  +no requests yet +0/500 valid", at_80[9]), at_80[9]
    assert plain_line(progress).startswith(f"{LONG_NAME} active; stage stage_2_with_a_name (3/5): 99999/123456 "
                                           "requests; batches: 12 validating, 34 in_progress,")


def test_control_characters_of_a_provider_never_reach_the_screen():
    progress = JobProgress("j", "main", "active",
                           stages=[StageProgress("main", 10, 1, 0, {"in_progress\x1b[2J\r": 1})])
    assert "\x1b" not in plain_line(progress) and "\r" not in plain_line(progress)
    assert all("\x1b" not in line.plain and "\r" not in line.plain for line in live_lines(progress, 80))


# -- Ctrl-C -------------------------------------------------------------------------------------------------------


def test_ctrl_c_names_the_command_that_resumes_with_its_workspace_and_options(tmp_path):
    workspace = emulator_config(tmp_path / "my work" / "space", line_seconds=0.2, validation_seconds=0,
                                finalizing_seconds=0)
    env = {k: v for k, v in env_for(workspace).items() if k != "BATCHGEN_WORKSPACE"}
    run = subprocess.Popen([sys.executable, "-m", "batchgen", "run", "jobs/task_api", "--backend", "embedded",
                            "--budget-mode", "expected", "--workspace", str(workspace)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not _batches(workspace):
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    where = shlex.quote(str(workspace))
    resume = f"batchgen run jobs/task_api --backend embedded --budget-mode expected --workspace {where}"
    assert run.returncode == 130, err
    assert err.splitlines()[-1] == (f"Stopped. Batches keep running; resume with '{resume}' or check with "
                                    f"'batchgen status task_api --workspace {where}'"), err
    assert out == "" and "Traceback" not in err
    emulator_config(workspace, line_seconds=0, validation_seconds=0, finalizing_seconds=0)
    again = subprocess.run([sys.executable, "-m", *shlex.split(resume)], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("Job task_api: done"), again.stderr
    assert _batches(workspace) == 2  # the first, not sent again, and the top-up for the cells below their share


def _batches(workspace: Path) -> int:
    if not (workspace / "ledger.db").exists():
        return 0
    with Ledger.open(workspace / "ledger.db") as ledger:
        return int(ledger.scalar("SELECT count(*) FROM batches"))
