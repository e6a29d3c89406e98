"""What is known: the SQLite ledger (every read and write of state, as named methods), its migrations, its
integrity check, and the workspace it lives in."""

from batchgen.ledger.base import dec_sum, utcnow
from batchgen.ledger.states import TERMINAL, UNFINISHED
from batchgen.ledger.store import Ledger
from batchgen.ledger.workspace import Workspace

__all__ = ["TERMINAL", "UNFINISHED", "Ledger", "Workspace", "dec_sum", "utcnow"]
