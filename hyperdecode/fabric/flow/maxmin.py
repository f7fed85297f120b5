"""Weighted max-min fairness with demand caps and strict priority classes, by vectorised progressive filling.

Each entry is (flow, link, weight): the flow puts weight × its rate on the link. Within a class every flow's rate
rises together until a link fills or the flow reaches its cap. Each round freezes, at once, the flows of every
link whose level (what is left of it over the weight of its unfrozen flows) is the lowest among the links its
flows touch, and every flow whose cap is below all its links' levels: such a local minimum is what global
progressive filling would reach next on that link, since a link's level only rises as other flows freeze. The
lower classes fill what the higher ones left.

>>> rates, bottleneck = fill(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), np.ones(4), np.full(3, np.inf),
...                          np.zeros(3, dtype=int), np.array([10.0, 4.0]))
>>> rates.tolist(), bottleneck.tolist()
([8.0, 2.0, 2.0], [0, 1, 1])
"""
from __future__ import annotations

import numpy as np

__all__ = ["fill"]

TOLERANCE = 1e-12


def fill(owner: np.ndarray, link: np.ndarray, weight: np.ndarray, caps: np.ndarray, priority: np.ndarray,
         capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rates of flows 0..F-1 (entries grouped by owner) and each one's bottleneck link (-1: its own cap)."""
    rates = np.zeros(len(caps))
    bottleneck = np.full(len(caps), -1, dtype=np.int64)
    if np.bincount(link).max() == 1:  # no link is shared: each flow alone at its narrowest link or its cap
        starts = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
        alone = capacity[link] / weight
        narrowest = np.minimum.reduceat(alone, starts)
        rates[owner[starts]] = np.minimum(narrowest, caps[owner[starts]])
        first = np.minimum.reduceat(np.where(alone == np.repeat(narrowest, np.diff(np.append(starts, len(link)))),
                                             np.arange(len(link)), len(link)), starts)
        bottleneck[owner[starts]] = np.where(narrowest <= caps[owner[starts]], link[first], -1)
        return rates, bottleneck
    remaining = capacity.astype(np.float64).copy()
    levels = np.unique(priority)
    for level in levels:
        keep = priority[owner] == level if len(levels) > 1 else slice(None)
        _fill_class(owner[keep], link[keep], weight[keep], caps, remaining, rates, bottleneck)
    return rates, bottleneck


def _fill_class(owner: np.ndarray, link: np.ndarray, weight: np.ndarray, caps: np.ndarray, remaining: np.ndarray,
                rates: np.ndarray, bottleneck: np.ndarray) -> None:
    """Progressive filling of one class over `remaining` link capacity, used up in place."""
    size = len(remaining)
    while len(owner):
        load = np.bincount(link, weight, minlength=size)
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.where(load > 0, np.maximum(remaining, 0.0) / load, np.inf)
        starts = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
        lengths = np.diff(np.append(starts, len(owner)))
        ids = owner[starts]
        entry_level = level[link]
        flow_level = np.minimum(np.minimum.reduceat(entry_level, starts), caps[ids])
        per_entry = np.repeat(flow_level, lengths)
        blocked = np.bincount(link[per_entry < entry_level * (1 - TOLERANCE)], minlength=size) > 0
        on_minimum = ~blocked[link] & (entry_level <= per_entry * (1 + TOLERANCE))
        frozen_by_link = np.logical_or.reduceat(on_minimum, starts)
        at_cap = flow_level >= caps[ids] * (1 - TOLERANCE)
        frozen = frozen_by_link | at_cap
        if not frozen.any():  # rounding: the lowest flow is always safe to freeze
            frozen[np.argmin(flow_level)] = True
        rates[ids[frozen]] = flow_level[frozen]
        first = np.flatnonzero(on_minimum)
        lowest = np.full(len(starts), -1, dtype=np.int64)
        segment = np.searchsorted(starts, first, side="right") - 1
        lowest[segment[::-1]] = link[first[::-1]]  # the first local-minimum link of each flow
        bottleneck[ids[frozen]] = np.where(frozen_by_link[frozen], lowest[frozen], -1)
        leaving = np.repeat(frozen, lengths)
        np.subtract.at(remaining, link[leaving], weight[leaving] * per_entry[leaving])
        owner, link, weight = owner[~leaving], link[~leaving], weight[~leaving]
