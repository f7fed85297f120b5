"""Automatic prefix caching over cache rows: which tokens each row's cache holds, so that a new sequence starts
from the longest prefix any row already computed (SGLang's idea, at the granularity of this engine's rows).

A row of a running sequence holds that sequence's computed tokens; a finished sequence's row keeps them until the
row is taken again. A new prompt takes the free row with the longest match (the least recently used free row when
none matches: eviction), and when a longer match sits in another row (a running sequence, or another free row)
that row's prefix is copied into the chosen one. At least one prompt token is always fed, so the step that
computes it yields the logits to sample from.

>>> cache = PrefixCache(3)
>>> cache.store(0, [1, 2, 3, 4])
>>> cache.choose([1, 2, 3, 9, 9], free=[0, 1, 2], running={})
(0, 0, 3)
>>> cache.choose([7, 8], free=[2, 1], running={})
(1, 1, 0)
"""
from __future__ import annotations

__all__ = ["PrefixCache", "common_prefix"]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    def __init__(self, rows: int):
        self.held: list[list[int]] = [[] for _ in range(rows)]  # tokens whose cache a free row still holds
        self.last_used = [0] * rows
        self.clock = 0
        self.queried = 0  # prompt tokens looked up
        self.hits = 0  # of them found in a row

    def grow(self, rows: int) -> None:
        """More rows (the caches grew, keeping what the old rows held)."""
        extra = max(rows - len(self.held), 0)
        self.held += [[] for _ in range(extra)]
        self.last_used += [0] * extra

    def store(self, row: int, tokens: list[int]) -> None:
        """A row's sequence ended with these tokens computed (its cache holds them)."""
        self.held[row] = list(tokens)
        self.clock += 1
        self.last_used[row] = self.clock

    def clear(self) -> None:
        """Every row forgotten (their caches were cleared); the lookup counts go on."""
        self.held = [[] for _ in self.held]
        self.last_used = [0] * len(self.held)

    def forget(self, row: int) -> None:
        """The row's content is not to be trusted (its sequence failed)."""
        self.held[row] = []

    def choose(self, prompt: list[int], free: list[int], running: dict[int, list[int]]) -> tuple[int, int, int]:
        """(row to take, row to reuse the prefix of, prefix length) for a new prompt, given the free rows and the
        computed tokens of each running row; the length leaves at least the prompt's last token to feed."""
        limit = len(prompt) - 1
        matched = {r: min(common_prefix(prompt, self.held[r]), limit) for r in free}
        best = max(free, key=lambda r: (matched[r], -self.last_used[r], -r))
        n = matched[best]
        take = best if n > 0 else min(free, key=lambda r: (self.last_used[r], r))  # no match: least recently used
        source = take
        for row, tokens in running.items():
            m = min(common_prefix(prompt, tokens), limit)
            if m > n:
                source, n = row, m
        self.queried += len(prompt)
        self.hits += n
        self.held[take] = []
        return take, source, n
