"""Preference records → token rows, and a preference stage's train / selection / held-out sets.

``encode_pairs`` / ``encode_rankings`` render each reply of a ``data.preferences.Preference`` or
``Ranking`` with ``training.logprobs.encode_response`` (dropping and counting what does not fit);
``three_sets`` carves the sets the DPO and reward stages train on, select their best step with and
score once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge.data.supervised import holdout, train_and_held
from lmforge.training.logprobs import encode_response

Row = tuple[list[int], list[bool]]


def encode_pairs(tok: Any, prefs: Sequence[Any], block_size: int) -> tuple[list[tuple[Row, Row]], int]:
    """``([(chosen row, rejected row), ...], dropped)`` of ``data.preferences.Preference``\\ s.

    A pair is dropped (and counted) when a rendering fails or either reply has no token left within
    ``block_size + 1`` tokens.
    """
    groups = [_encode_replies(tok, p.prompt, (p.chosen, p.rejected), block_size) for p in prefs]
    out = [tuple(rows) for rows in groups if rows is not None]
    return out, len(groups) - len(out)


def encode_rankings(tok: Any, rankings: Sequence[Any], block_size: int) -> tuple[list[list[Row]], int]:
    """``([[row of each response, best first], ...], dropped)`` of ``data.preferences.Ranking``\\ s;
    dropped (and counted) as ``encode_pairs`` drops a pair."""
    groups = [_encode_replies(tok, r.prompt, r.responses, block_size) for r in rankings]
    out = [rows for rows in groups if rows is not None]
    return out, len(groups) - len(out)


def _encode_replies(tok: Any, prompt: Any, replies: Sequence[Any], block_size: int) -> list[Row] | None:
    """The row of each reply to ``prompt``, or None when a rendering fails or a reply has no token left
    within ``block_size + 1`` tokens (the group is then dropped)."""
    try:
        rows = [encode_response(tok, prompt, reply, block_size) for reply in replies]
    except ValueError:
        return None
    if any(len(ids) < 2 or not any(mask[1:]) for ids, mask in rows):
        return None
    return rows


def three_sets(
    read: Callable[[Path, list], list[Any]], inputs: Mapping[str, Path], cfg: Any
) -> tuple[list[Any], list[Any], list[Any], list]:
    """``(train, select, held_out, problems)`` of a preference stage's inputs: ``read``
    (``data.preferences.read_preferences`` or ``read_rankings``) over the ``train*`` inputs; the held-out
    records are the ``val`` input or else ``cfg.val_fraction`` (0.1 when 0) of them
    (``data.supervised.train_and_held``); the selection records, which choose the best step, are as much
    again carved from the rest (seed ``cfg.seed + 1``): the held-out records are scored once, at the
    end, by weights they did not choose. ``problems`` lists the bad records read."""
    train, held, problems = train_and_held(read, inputs, cfg.val_fraction, cfg.seed)
    train, select = holdout(train, cfg.val_fraction or 0.1, cfg.seed + 1)
    return train, select, held, problems
