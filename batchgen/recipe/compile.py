"""Compile a stage into Batch API input files (shards), streamed to disk, byte-identical on every run.

Layout under the shards folder (`shards_dir`, the workspace's `shards/`)::

    <job>/<stage>/<spec hash 12>/a<attempt>[-<subset digest 10>][-split]/
        shard-00000.jsonl            request lines (the Batch API input file)
        shard-00000.manifest.jsonl   one line per request, same order (see below)
        shards.json                  the list of ShardInfo of this compile

A subset compile (a retry or top-up of some variants) gets its own directory, named by a digest of its indices, so
two retries with the same attempt number never overwrite each other; a shard cut in parts for the queued-token cap
adds `-split`, so its parts never overwrite the shard they replace.

Manifest line (compact JSON): {"custom_id", "index", "stage", "attempt", "cell", "seeds", "sources",
"temperature", "input_tokens", "max_tokens"}: what the ledger records per request, read one line at a time.

Shards are cut before a line would break any limit: `limits.max_lines` (≤ 50,000), `limits.max_bytes` (190 MB
by default, under the 200 MB file limit), `limits.max_queued_tokens` (input tokens per shard, optional) and
one model per file. Each file is written to a temporary name and renamed when complete; a leftover shard of an
earlier compile in the same directory is removed. A compile that fails (a template error, a full disk: one
`DiskError` line naming the shard) leaves the directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from batchgen.disk import make_folder, write_error, writing
from batchgen.errors import DiskError, SpecError
from batchgen.recipe.render import RenderedRequest, Renderer
from batchgen.recipe.spec import JobSpec, LimitsSpec, ResolvedStage
from batchgen.recipe.variants import VariantPlan, request_count

PROGRESS_EVERY = 10_000  # requests between two calls of a compile's progress callback


@dataclass(frozen=True)
class ShardInfo:
    """One compiled input file."""

    path: str
    manifest_path: str
    number: int
    stage: str
    attempt: int
    model: str
    lines: int
    bytes: int
    input_tokens: int
    max_output_tokens: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompileResult:
    """What a compile produced."""

    job: str
    stage: str
    attempt: int
    spec_hash: str
    directory: str
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(s.lines for s in self.shards)

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens for s in self.shards)


class _Packer:
    """Cuts a stream of request lines into shards under the limits; writes them unless `directory` is None."""

    def __init__(
        self, limits: LimitsSpec, model: str, stage: ResolvedStage, attempt: int, directory: Path | None
    ):
        self.limits, self.model, self.stage, self.attempt, self.directory = (
            limits,
            model,
            stage,
            attempt,
            directory,
        )
        self.shards: list[ShardInfo] = []
        self.created: list[Path] = []  # shard files this compile added to the folder (removed if it fails)
        self._lines = self._bytes = self._tokens = 0
        self._hash = hashlib.sha256()
        self._out: IO[bytes] | None = None
        self._manifest: IO[bytes] | None = None

    def add(self, request: RenderedRequest) -> None:
        size, tokens = len(request.line), request.input_tokens
        cap = self.limits.max_queued_tokens
        if size > self.limits.max_bytes or (cap is not None and tokens > cap):
            raise SpecError(
                f"request {request.custom_id} alone ({size} bytes, {tokens} input tokens) exceeds the "
                f"shard limits (max_bytes {self.limits.max_bytes}, max_queued_tokens {cap})"
            )
        try:
            if self._lines and (
                self._lines + 1 > self.limits.max_lines
                or self._bytes + size > self.limits.max_bytes
                or (cap is not None and self._tokens + tokens > cap)
            ):
                self._finish()
            if self._lines == 0 and self.directory is not None:
                self._open()
            self._lines += 1
            self._bytes += size
            self._tokens += tokens
            self._hash.update(request.line)
            if self._out is not None and self._manifest is not None:
                self._out.write(request.line)
                self._manifest.write(_manifest_line(request, self.stage.max_tokens))
        except OSError as error:
            raise self._write_error(error) from error

    def _paths(self, number: int) -> tuple[Path, Path]:
        assert self.directory is not None
        return (
            self.directory / f"shard-{number:05d}.jsonl",
            self.directory / f"shard-{number:05d}.manifest.jsonl",
        )

    def _open(self) -> None:
        path, manifest = self._paths(len(self.shards))
        self._out = open(str(path) + ".tmp", "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._manifest = open(str(manifest) + ".tmp", "wb", buffering=1 << 20)  # noqa: SIM115

    def close(self) -> None:
        """Finish the current shard (if any)."""
        try:
            self._finish()
        except OSError as error:
            raise self._write_error(error) from error

    def _write_error(self, error: OSError) -> DiskError:
        """A full disk (or any refused write) as one line naming the shard being written."""
        return write_error(error, f"shard {self._paths(len(self.shards))[0]}")

    def _finish(self) -> None:
        if self._lines == 0:
            return
        number = len(self.shards)
        path, manifest = self._paths(number) if self.directory is not None else (Path(""), Path(""))
        # Both files complete (flushed: that is where a full disk shows) before either takes its final name.
        handles = [(h, final) for h, final in ((self._out, path), (self._manifest, manifest)) if h is not None]
        for handle, _ in handles:
            handle.close()
        for handle, final in handles:
            if not final.exists():
                self.created.append(final)
            os.replace(handle.name, final)
        self._out = self._manifest = None
        self.shards.append(
            ShardInfo(
                str(path),
                str(manifest),
                number,
                self.stage.name,
                self.attempt,
                self.model,
                self._lines,
                self._bytes,
                self._tokens,
                self._lines * self.stage.max_tokens,
                self._hash.hexdigest(),
            )
        )
        self._lines = self._bytes = self._tokens = 0
        self._hash = hashlib.sha256()

    def abort(self) -> None:
        """Leave the folder as it was: remove the temporary files, and the shards this compile added to it.

        A shard that was there before is left alone: compiling is deterministic, so it has the same bytes, and the
        ledger may know it."""
        for handle in (self._out, self._manifest):
            if handle is not None:
                try:
                    handle.close()  # flushes what is buffered: on a full disk this fails too
                except OSError:
                    pass
                Path(handle.name).unlink(missing_ok=True)
        self._out = self._manifest = None
        for path in self.created:
            path.unlink(missing_ok=True)
        self.created.clear()


def _manifest_line(request: RenderedRequest, max_tokens: int) -> bytes:
    v = request.variant
    return (
        orjson.dumps(
            {
                "custom_id": request.custom_id,
                "index": v.index,
                "stage": request.stage,
                "attempt": request.attempt,
                "cell": v.cell,
                "seeds": v.seeds,
                "sources": v.sources,
                "temperature": v.temperature,
                "input_tokens": request.input_tokens,
                "max_tokens": max_tokens,
            }
        )
        + b"\n"
    )


def iter_requests(
    spec: JobSpec,
    stage: ResolvedStage | str | None = None,
    *,
    attempt: int = 1,
    indices: Iterable[int] | None = None,
    sources: Sequence[dict[str, Any]] | None = None,
    sparse: bool = False,
    source_cells: Sequence[Mapping[str, Any]] | None = None,
    shown: Mapping[int, tuple[int, ...]] | None = None,
    prefixes: bool = False,
) -> Iterator[RenderedRequest]:
    """The request lines of a stage, in index order, one at a time (nothing is written). `sparse`: the indices
    are scattered (a sample), see `VariantPlan`; `source_cells`: the cell of each source, which its children keep;
    `shown`: of a judge stage, the sources each of the indices shows; `prefixes`: give each chat request its
    prompt's chunks (`RenderedRequest.prefix`, for a plan's cache estimate)."""
    resolved = stage if isinstance(stage, ResolvedStage) else spec.stage(stage)
    if attempt < 1:
        raise SpecError(f"attempt must be >= 1, not {attempt}")
    if resolved.source is not None and not sources:
        raise SpecError(
            f"Stage {resolved.name!r} is compiled from the valid examples of stage {resolved.source!r}, "
            f"which are not there yet; 'batchgen run' compiles it once {resolved.source!r} is done "
            "(library: pass them as sources=)"
        )
    renderer = Renderer(spec, resolved, sources, prefixes=prefixes)
    plan = VariantPlan(spec, resolved, len(sources) if sources else None, sparse=sparse, source_cells=source_cells,
                       shown=shown)
    for variant in plan.variants(indices):
        yield renderer.request(variant, attempt)


def stage_directory(
    shards_dir: Path, spec: JobSpec, stage: str, attempt: int, indices: Iterable[int] | None, label: str = ""
) -> Path:
    """Where the shards of one compile go (see the module docstring)."""
    name = f"a{attempt}"
    if indices is not None:
        digest = hashlib.sha256(",".join(map(str, sorted(set(indices)))).encode()).hexdigest()[:10]
        name += f"-{digest}"
    return shards_dir / spec.name / stage / spec.spec_hash[:12] / (name + (f"-{label}" if label else ""))


def compile_stage(
    spec: JobSpec,
    stage: ResolvedStage | str | None = None,
    *,
    shards_dir: str | Path | None = None,
    attempt: int = 1,
    indices: Iterable[int] | None = None,
    sources: Sequence[dict[str, Any]] | None = None,
    source_cells: Sequence[Mapping[str, Any]] | None = None,
    shown: Mapping[int, tuple[int, ...]] | None = None,
    limits: LimitsSpec | None = None,
    write: bool = True,
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> CompileResult:
    """Compile one stage (or the given variant indices of it) for one attempt; stream the shards to disk.

    The shards go under `shards_dir` (the workspace's `shards/`). `sources` are the valid examples of the `from`
    stage (dicts in the job's format), and `source_cells` their cells, which the evolved examples keep (see
    `recipe.variants`); a judge stage's `shown` names the sources each index shows. `limits` overrides the job's
    [limits]. With write=False nothing is written; the result describes the shards it would write. Memory does not
    grow with the number of requests: each line goes to its file as it is rendered. `progress(done, total)` is
    called every PROGRESS_EVERY requests and at the end of a stage that long, for a display.
    """
    resolved = stage if isinstance(stage, ResolvedStage) else spec.stage(stage)
    chosen = sorted(set(indices)) if indices is not None else None
    directory: Path | None = None
    if write:
        if shards_dir is None:
            raise ValueError("compile_stage(write=True) needs shards_dir")
        directory = stage_directory(Path(shards_dir), spec, resolved.name, attempt, chosen, label)
        make_folder(directory, f"the shards of stage {resolved.name!r}", "pass --workspace DIR")
    packer = _Packer(limits or spec.limits, spec.model, resolved, attempt, directory)
    total = len(chosen) if chosen is not None else request_count(spec, resolved)
    try:
        requests = iter_requests(spec, resolved, attempt=attempt, indices=chosen, sources=sources,
                                 source_cells=source_cells, shown=shown)
        for done, request in enumerate(requests, 1):
            packer.add(request)
            if progress is not None and (done % PROGRESS_EVERY == 0 or done == total >= PROGRESS_EVERY):
                progress(done, total)
        packer.close()
        result = CompileResult(
            spec.name, resolved.name, attempt, spec.spec_hash, str(directory or ""), packer.shards
        )
        if directory is not None:
            _finish_directory(directory, result)
    except BaseException:
        packer.abort()
        raise
    return result


def _finish_directory(directory: Path, result: CompileResult) -> None:
    """Write shards.json, then remove the shards an earlier, larger compile left in the folder."""
    summary = directory / "shards.json"
    tmp = summary.with_suffix(".json.tmp")
    entries = [
        {**s.to_dict(), "path": Path(s.path).name, "manifest_path": Path(s.manifest_path).name}
        for s in result.shards
    ]
    try:
        with writing(f"shard list {summary}"):
            tmp.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, summary)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    keep = {Path(p).name for s in result.shards for p in (s.path, s.manifest_path)}
    for old in directory.glob("shard-*.jsonl"):
        if old.name not in keep:
            old.unlink()


def read_manifest(path: str | Path) -> Iterator[dict[str, Any]]:
    """The manifest lines of a shard, one dict at a time."""
    with open(path, "rb") as handle:
        for line in handle:
            yield orjson.loads(line)
