"""Where batchgen keeps its state: `.batchgen/` in the current directory unless told otherwise.

    .batchgen/
      ledger.db     the SQLite ledger
      shards/       compiled Batch API input files
      results/      downloaded output and error files
      datasets/     exported datasets
      emulator/     state of the embedded emulator

Resolution order: an explicit path (the --workspace option) > BATCHGEN_WORKSPACE > ./.batchgen.
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
    def emulator_dir(self) -> Path:
        return self.root / "emulator"

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
