"""Provider choice: a weighted random first pick, then failover in weight order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    weight: int


def plan(candidates: Sequence[Candidate], rng: random.Random) -> list[str]:
    """Order in which one attempt tries the providers.

    The first is drawn at random in proportion to weight; the rest follow by
    descending weight (ties keep configuration order) so failover prefers the
    provider that normally carries more traffic. Weight-0 providers are never
    drawn first but still serve as failover.
    """
    total = sum(c.weight for c in candidates if c.weight > 0)
    if total <= 0:
        ordered = list(candidates)
    else:
        point = rng.random() * total
        first = candidates[-1]
        for cand in candidates:
            if cand.weight <= 0:
                continue
            point -= cand.weight
            if point < 0:
                first = cand
                break
        rest = [c for c in candidates if c is not first]
        ordered = [first, *sorted(rest, key=lambda c: -c.weight)]
    return [c.name for c in ordered]
