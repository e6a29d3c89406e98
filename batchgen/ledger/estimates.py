"""Estimates: what answers to requests of one model and template showed (the figures a stage's estimates learn
from), the pending shards priced again with them, and how far estimated costs were from actual ones, by basis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from batchgen.ledger.base import Store, dec_sum


class EstimateRecords(Store):
    def observed_answers(self, model: str, template_digest: str) -> dict[str, dict[str, int]]:
        """Per job, the answers to its requests of shards of this model and template digest: {"answered" (results
        from the output file with status 200: succeeded or invalid), "completion_tokens" (their sum),
        "completion_squares" (the sum of their squares), "valid" (the valid examples of the job's stages rendered
        from that template, now)}. One aggregate query; jobs without an answer are left out."""
        rows = self._execute(
            "WITH matched AS (SELECT DISTINCT job, stage FROM shards WHERE model = ? AND template_digest = ?), "
            "answers AS (SELECT r.job AS job, count(*) AS answered, sum(s.completion_tokens) AS tokens, "
            "sum(s.completion_tokens * s.completion_tokens) AS squares FROM shards sh "
            "JOIN requests r ON r.shard_id = sh.id JOIN results s ON s.custom_id = r.custom_id "
            "WHERE sh.model = ? AND sh.template_digest = ? AND s.source = 'output' AND s.status_code = 200 "
            "GROUP BY r.job), "
            "valid AS (SELECT e.job AS job, count(*) AS valid FROM matched m JOIN examples e ON e.job = m.job "
            "AND e.stage = m.stage AND e.valid = 1 GROUP BY e.job) "
            "SELECT a.job, a.answered, a.tokens, a.squares, coalesce(v.valid, 0) FROM answers a "
            "LEFT JOIN valid v ON v.job = a.job ORDER BY a.job",
            [model, template_digest, model, template_digest])
        return {job: {"answered": int(n), "completion_tokens": int(tokens or 0), "completion_squares": int(sq or 0),
                      "valid": int(valid)} for job, n, tokens, sq, valid in rows}

    def pending_prior_shards(self, job: str) -> list[dict[str, Any]]:
        """The job's pending shards whose expected cost was priced with the prior figures, and their template."""
        return self.rows("SELECT * FROM shards WHERE job = ? AND status = 'pending' AND estimate_basis = 'prior' "
                         "AND template_digest IS NOT NULL ORDER BY id", [job])

    def shard_prompt_sizes(self, shard_id: str) -> dict[int, int]:
        """Input tokens -> how many of the shard's requests have that many."""
        return {int(tokens): int(n) for tokens, n in self._execute(
            "SELECT input_tokens, count(*) FROM requests WHERE shard_id = ? GROUP BY input_tokens", [shard_id])}

    def reprice_shard(self, shard_id: str, est_cost_usd: Decimal, basis: str, output_tokens: int) -> None:
        """A pending shard's expected cost, priced again on another basis."""
        self._execute("UPDATE shards SET est_cost_usd = ?, estimate_basis = ?, est_output_tokens = ? "
                      "WHERE id = ? AND status = 'pending'", [str(est_cost_usd), basis, output_tokens, shard_id])

    def estimate_errors(self, job: str | None = None) -> list[dict[str, Any]]:
        """How far the estimates were from what collected batches cost, per job and estimate basis (the job's
        batches that are collected, each priced as its shard was when it was submitted): one row each,
        {"job", "basis" (prior or learned), "batches", "requests" (lines submitted), "estimated_usd" (the sum of
        the batches' expected cost), "actual_usd" (the sum of their exact cost), "error_usd" (actual less
        estimated: below 0, the estimate was too high), "error_ratio" (error_usd / actual_usd as a Decimal, None when
        nothing was spent)}, by job, then prior before learned. Money is exact Decimal. `job`: that job's rows only.
        """
        where, params = ("AND b.job = ? ", [job]) if job is not None else ("", [])
        rows = self._execute(
            "SELECT b.job, sh.estimate_basis, b.est_cost_usd, b.actual_cost_usd, sh.lines FROM batches b "
            f"JOIN shards sh ON sh.id = b.shard_id WHERE b.collected = 1 {where}ORDER BY b.job", params)
        grouped: dict[tuple[str, str], list[tuple[str, str | None, int]]] = {}
        for name, basis, estimated, actual, lines in rows:
            grouped.setdefault((name, basis), []).append((estimated, actual, int(lines)))
        out = []
        for (name, basis), batches in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1] != "prior")):
            estimated_usd = dec_sum(e for e, _, _ in batches)
            actual_usd = dec_sum(a or "0" for _, a, _ in batches)
            error = actual_usd - estimated_usd
            out.append({"job": name, "basis": basis, "batches": len(batches), "requests": sum(n for *_, n in batches),
                        "estimated_usd": estimated_usd, "actual_usd": actual_usd, "error_usd": error,
                        "error_ratio": error / actual_usd if actual_usd else None})
        return out
