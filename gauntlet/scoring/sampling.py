"""Which peers get the (expensive) loss test in a window: binned by rating, least recently tested first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def choose_for_eval(candidates: Sequence[str], ordinals: Mapping[str, float], last_eval: Mapping[str, int],
                    count: int, bins: int = 3) -> list[str]:
    """Split the candidates into ``bins`` groups by rating, order each group by when it was last
    tested (never first; ties by hotkey), and take from the groups in turn until ``count`` are chosen —
    so low-rated peers get tested as often as high-rated ones."""
    ranked = sorted(candidates, key=lambda h: (-ordinals.get(h, 0.0), h))
    size = -(-len(ranked) // bins) if ranked else 0
    groups = [sorted(ranked[i : i + size], key=lambda h: (last_eval.get(h, -1), h))
              for i in range(0, len(ranked), size or 1)]
    chosen: list[str] = []
    while len(chosen) < min(count, len(ranked)):
        for group in groups:
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return chosen
