"""Prompt-cache hits a plan expects: the prefix each request shares with an earlier request of the job.

OpenAI caches prompt prefixes on its own: a prompt of 1,024 tokens or more is cached in steps of 128 tokens
(1,024, 1,152, 1,280, ...) for a prefix seen recently on the same model, and the cached tokens are billed at the
model's cached-input rate (`batchgen.recipe.pricing`: at batch price, the batch cached rate where the price table
has one, else the batch input rate). A plan therefore expects, for each request after the first of the job, the
longest prefix (in tokens) it shares with an earlier request, if that is at least 1,024 tokens, rounded down to a
step.

Prompts are compared as `render.Renderer` gives them (`RenderedRequest.prefix`): chunks of whole lines, each with
its exact tokens, so the tokens of a shared prefix of whole chunks are exact. A prefix that shares only part of a
chunk counts up to the chunk before it: the estimate never claims a token that is not shared.

Nothing but a few hashes is kept per request: the hash of its prefix at each chunk where its running token count
crosses a step. A later request shares a prefix of at least a step with an earlier one exactly when its own hash at
that step was seen before (equal chunks, equal tokens), so the largest step whose hash was seen is its cached
figure. Requests are fed in the order the job sends them (stage by stage, variant order); a sampled plan feeds its
sample alone, so each sampled request is compared with the earlier sampled ones only, a lower bound of what it
shares with all the earlier requests (see `batchgen.recipe.plan`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128


def cached_tokens(shared: int) -> int:
    """The cached tokens of a shared prefix of `shared` tokens: 0 below 1,024, else 1,024 + 128 k at most."""
    if shared < CACHE_MIN_TOKENS:
        return 0
    return CACHE_MIN_TOKENS + (shared - CACHE_MIN_TOKENS) // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS


class PrefixCache:
    """The prefixes the job's requests so far leave in the provider's cache (one model)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, chunks: Iterable[tuple[Hashable, int]]) -> int:
        """The tokens of this prompt expected to be cached (its prefix shared with an earlier prompt, in steps);
        then this prompt's prefixes are remembered for the later ones."""
        seen, marks = self._seen, []
        digest, total, step, cached, matching = 0, 0, CACHE_MIN_TOKENS, 0, True
        for key, tokens in chunks:
            digest = hash((digest, key, tokens))
            total += tokens
            if total < step:
                continue
            crossed = CACHE_MIN_TOKENS + (total - CACHE_MIN_TOKENS) // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS
            step = crossed + CACHE_STEP_TOKENS
            marks.append(digest)
            if matching and digest in seen:
                cached = crossed
            else:
                matching = False
        seen.update(marks)
        return cached
