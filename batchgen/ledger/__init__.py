"""What is known: the SQLite ledger (every read and write of state, as named methods), its migrations, its
integrity check, and the workspace it lives in.

Names load on first use, so that a command that only needs the workspace's folders (`batchgen compile`) does not
load sqlite-utils and the record classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchgen._lazy import lazy_names

_EXPORTS = {
    "TERMINAL": "batchgen.ledger.states",
    "UNFINISHED": "batchgen.ledger.states",
    "Ledger": "batchgen.ledger.store",
    "Workspace": "batchgen.ledger.workspace",
    "dec_sum": "batchgen.ledger.base",
    "utcnow": "batchgen.ledger.base",
}

__all__ = ["TERMINAL", "UNFINISHED", "Ledger", "Workspace", "dec_sum", "utcnow"]


__getattr__ = lazy_names(__name__, _EXPORTS)


if TYPE_CHECKING:
    from batchgen.ledger.base import dec_sum, utcnow
    from batchgen.ledger.states import TERMINAL, UNFINISHED
    from batchgen.ledger.store import Ledger
    from batchgen.ledger.workspace import Workspace
