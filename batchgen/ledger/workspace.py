"""Where batchgen keeps its state: `.batchgen/` in the current directory unless told otherwise.

    .batchgen/
      ledger.db     the SQLite ledger
      shards/       compiled Batch API input files
      results/      downloaded output and error files
      datasets/     exported datasets
      reviews/      review samples written for a domain expert (`batchgen review` without -o)
      emulator/     state of the embedded emulator

Resolution order: an explicit path (the --workspace option) > BATCHGEN_WORKSPACE > ./.batchgen.

The ledger records a path inside the workspace relative to it (`shards/task_api/main/...`), so that the workspace
can be moved as a whole; `locate` resolves a recorded path against the workspace in use. A job directory lies
outside the workspace: it is recorded by its absolute path and, when it lies inside the workspace's parent folder
(the project), also by its path from there, so that it is still found after the whole project folder moved.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchgen.disk import out_of_space, write_error
from batchgen.errors import BatchgenError

ENV_VAR = "BATCHGEN_WORKSPACE"
DEFAULT_NAME = ".batchgen"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None = None) -> Workspace:
        chosen = path or os.environ.get(ENV_VAR) or DEFAULT_NAME
        return cls(Path(chosen).expanduser().absolute())

    @property
    def ledger_path(self) -> Path:
        return Path(os.environ["BATCHGEN_LEDGER"]) if os.environ.get("BATCHGEN_LEDGER") else self.root / "ledger.db"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def reviews_dir(self) -> Path:
        return self.root / "reviews"

    @property
    def reports_dir(self) -> Path:
        """Where `report --html` and `compare --html` write their pages unless told otherwise."""
        return self.root / "reports"

    @property
    def emulator_dir(self) -> Path:
        return self.root / "emulator"

    # -- paths the ledger records ---------------------------------------------------------------------------------
    def stored(self, path: str | os.PathLike[str]) -> str:
        """How the ledger records a path: relative to the workspace when it lies inside it, else absolute."""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return str(absolute)

    def locate(self, stored: str) -> Path:
        """A path the ledger recorded, on this machine: a relative one lies in this workspace."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    @property
    def project_dir(self) -> Path:
        """The folder that holds the workspace (and, as a rule, the jobs/ directory)."""
        return self.root.parent

    def project_relative(self, job_dir: str | os.PathLike[str]) -> str | None:
        """A job directory's path from the project folder, or None when it lies outside it."""
        try:
            return Path(job_dir).resolve().relative_to(self.project_dir.resolve()).as_posix()
        except ValueError:
            return None

    def find_job_dir(self, job_dir: str, relative: str | None) -> Path | None:
        """Where a job directory recorded as `job_dir` (absolute) and `relative` (from the project) is now: at its
        absolute path, else under this workspace's project folder (the whole project moved); None when it is gone."""
        from batchgen.recipe.spec import JOB_FILE  # here: the ledger's path commands need no pydantic

        for candidate in (Path(job_dir), self.project_dir / relative if relative else None):
            if candidate is not None and (candidate / JOB_FILE).is_file():
                return candidate
        return None

    def ensure(self) -> Workspace:
        """Create the workspace folders; a clear error when that is not possible."""
        try:
            for folder in (self.root, self.shards_dir, self.results_dir, self.datasets_dir, self.emulator_dir):
                folder.mkdir(parents=True, exist_ok=True)
            # a file of its own (two processes may start on one workspace at the same moment)
            tempfile.TemporaryFile(dir=self.root, prefix=".write-probe-").close()
        except OSError as error:
            if out_of_space(error):
                raise write_error(error, f"workspace {self.root}") from error
            raise BatchgenError(f"Workspace {self.root} is not writable: {error.strerror or error}; "
                                "pass --workspace DIR or set BATCHGEN_WORKSPACE") from error
        return self
