"""What `batchgen run` shows on stderr while it works: a live display on a terminal, one plain line per change
anywhere else. The figures are the engine's (a `JobProgress` after each tick); this module only lays them out.

On a terminal, rich redraws the display in place and cuts every line to the terminal's width with an ellipsis, so
that no line wraps (a wrapped line would throw the redraw off); when the run ends, however it ends, the display stays
on screen and whatever comes next starts on the line below it. Without a terminal (cron, a pipe, a log file) a line
is written only when something in it changed, in plain text without control characters.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import click

from batchgen.ledger.states import IN_FLIGHT
from batchgen.money import format_usd

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from batchgen.run.tick import JobProgress, StageProgress

# A batch's statuses in the order a batch goes through them (spec/batch-api.md §3).
STATUS_ORDER = (*IN_FLIGHT, "completed", "failed", "expired", "cancelled")
BAR_WIDTH = (10, 40)  # the narrowest and the widest a stage's bar is drawn


class Display:
    """No progress (--quiet, --json): only notes, such as an outage being waited out, are written."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> Display:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is KeyboardInterrupt and self.stream.isatty():
            self.stream.write("\n")  # past the ^C the terminal echoed, so that what follows has a line of its own

    def update(self, progress: JobProgress) -> None:
        """Show where the job stands after a tick."""

    def note(self, message: str) -> None:
        """A message of its own line, outside the progress (a warning)."""
        click.echo(printable(message), file=self.stream)


class LineDisplay(Display):
    """One plain line each time the figures change: for cron, a pipe or a log file."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._last: str | None = None

    def update(self, progress: JobProgress) -> None:
        line = plain_line(progress)
        if line != self._last:
            self._last = line
            click.echo(line, file=self.stream)


class LiveDisplay(Display):
    """Redrawn in place on a terminal after each tick; notes are written above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(stream)
        self._console: Console = Console(file=stream, force_terminal=True, highlight=False)
        # stdout is left alone (it may be a file that must get the summary alone); stderr written while the display
        # is up (another batchgen's turn, a warning) goes above it.
        self._live: Live = Live(console=self._console, auto_refresh=False, transient=False, redirect_stdout=False,
                                redirect_stderr=True)
        self._started = False

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._started:
            self._live.stop()  # drawn once more (over an echoed ^C), then the line below it
        else:
            super().__exit__(kind, error, trace)

    def update(self, progress: JobProgress) -> None:
        from rich.console import Group

        if not self._started:
            self._live.start()
            self._started = True
        lines = live_lines(progress, self._console.width, ascii_only=self._console.options.ascii_only)
        self._live.update(Group(*lines), refresh=True)

    def note(self, message: str) -> None:
        from rich.text import Text

        self._console.print(Text(printable(message)))


def progress_display(show: bool, stream: TextIO | None = None) -> Display:
    """The display for this stream: live on a terminal, plain lines elsewhere, none at all unless `show`."""
    stream = stream or sys.stderr
    if not show:
        return Display(stream)
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        return LiveDisplay(stream)
    return LineDisplay(stream)


# -- layout -----------------------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """Text without control characters: a provider's message may hold any, and they would move the cursor."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def batch_states(batches: dict[str, int]) -> str:
    """`2 in_progress, 1 finalizing, 3 completed`: in the order a batch goes through them."""
    order = [s for s in STATUS_ORDER if s in batches] + sorted(s for s in batches if s not in STATUS_ORDER)
    return ", ".join(f"{batches[status]} {status}" for status in order)


def _requests(stage: StageProgress) -> str:
    return f"{stage.answered}/{stage.requests} requests" if stage.requests else "no requests yet"


def _valid(stage: StageProgress) -> str:
    if stage.judged is not None:
        return f"{stage.judged} scored"
    target = f"/{stage.target}" if stage.target is not None else ""
    return f"{stage.valid_examples}{target} valid"


def _money(progress: JobProgress) -> list[str]:
    parts = [f"spent {format_usd(progress.spent_usd)}"]
    if progress.committed_usd != progress.spent_usd:
        parts.append(f"committed {format_usd(progress.committed_usd)}")
    parts.append(f"budget {format_usd(progress.budget_usd)}" if progress.budget_usd is not None else "no budget")
    return parts


def _current(progress: JobProgress) -> tuple[int, StageProgress | None]:
    for position, stage in enumerate(progress.stages, start=1):
        if stage.name == progress.stage:
            return position, stage
    return 0, None


def plain_line(progress: JobProgress) -> str:
    """The job in one line, about the stage being worked on (and the valid examples of the stages before it):
    `task_api active; stage main: 41/55 requests; batches: 1 in_progress; 330/500 valid; spent $0.0091, ...`."""
    parts = [f"{progress.job} {progress.status}"]
    position, stage = _current(progress)
    if stage is not None:
        of = f" ({position}/{len(progress.stages)})" if len(progress.stages) > 1 else ""
        parts += [f"stage {stage.name}{of}: {_requests(stage)}",
                  f"batches: {batch_states(stage.batches) or 'none yet'}", _valid(stage)]
        if position > 1:  # a stage's last figures come with the tick that opens the next one
            parts.append("before: " + ", ".join(f"{s.name} {_valid(s)}" for s in progress.stages[:position - 1]))
    parts.append(", ".join(_money(progress)))
    if progress.waiting_for_budget:
        parts.append(f"waiting: {progress.waiting_for_budget}")
    return printable("; ".join(parts))


def live_lines(progress: JobProgress, width: int, *, ascii_only: bool = False) -> list[Text]:
    """The display for a terminal `width` columns wide: a header, a bar per stage with its requests answered and
    valid examples (and its batches by status below), then the money. Each line is cut to `width` with an ellipsis,
    the last one two columns shorter: the terminal echoes a Ctrl-C as `^C` after it, which must not wrap either."""
    from rich.text import Text

    dot = ", " if ascii_only else " · "
    position, current = _current(progress)
    header = f"{progress.job} {progress.status}"
    if current is not None and len(progress.stages) > 1:
        header += f"{dot}stage {position}/{len(progress.stages)} {current.name}"
    lines = [Text(header, style="bold")]
    lines += _stage_lines(progress.stages, width, ascii_only)
    if progress.waiting_for_budget:
        lines.append(Text(f"  waiting: {progress.waiting_for_budget}", style="yellow"))
    lines.append(Text("  " + dot.join(_money(progress))))
    for line in lines:
        line.plain = printable(line.plain)
        line.no_wrap, line.overflow = True, "ellipsis"
        line.truncate(width, overflow="ellipsis")
    lines[-1].truncate(max(width - 2, 1), overflow="ellipsis")
    return lines


def _stage_lines(stages: list[StageProgress], width: int, ascii_only: bool) -> list[Text]:
    from rich.text import Text

    if not stages:
        return []
    name_width = max(len(stage.name) for stage in stages)
    requests_width = max(len(_requests(stage)) for stage in stages)
    valid_width = max(len(_valid(stage)) for stage in stages)
    room = width - (2 + name_width + 2) - (2 + requests_width) - (2 + valid_width)
    bar_width = min(max(room, BAR_WIDTH[0]), BAR_WIDTH[1])
    lines = []
    for stage in stages:
        line = Text(f"  {stage.name:<{name_width}}  ")
        line.append_text(_bar(stage, bar_width, ascii_only))
        line.append(f"  {_requests(stage):>{requests_width}}  {_valid(stage):>{valid_width}}")
        lines.append(line)
        if stage.batches:
            lines.append(Text(f"  {'':<{name_width}}  batches: {batch_states(stage.batches)}", style="dim"))
    return lines


def _bar(stage: StageProgress, width: int, ascii_only: bool) -> Text:
    """Requests answered of the stage's requests, drawn so that it reads without colour too (heavy on light)."""
    from rich.text import Text

    done = min(width, width * stage.answered // stage.requests) if stage.requests else 0
    full, empty = ("#", "-") if ascii_only else ("\u2501", "\u2500")
    finished = bool(stage.requests) and stage.answered >= stage.requests
    bar = Text(full * done, style="green" if finished else "cyan")
    bar.append(empty * (width - done), style="grey37")
    return bar
