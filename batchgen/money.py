"""Money as people read it: one format for every command, the plan and every message."""

from __future__ import annotations

from decimal import Decimal

NANO = Decimal("0.000000001")


def format_usd(amount: Decimal) -> str:
    """Money for people, the one way batchgen shows it: `$` and the amount to the nano-dollar (exact for every
    cost the ledger records at today's prices), without trailing zeros, at least two decimals: $0.15, $0.014571525."""
    text = format(amount.quantize(NANO).normalize(), "f")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"
