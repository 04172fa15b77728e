"""k-shot prompt assembly: an instruction, k solved examples, then the query — one function for zero-,
few- and multi-shot prompting.

The layout follows lm-evaluation-harness so numbers are comparable::

    {instruction}{sep}{shot_1.query}{delim}{shot_1.target}{sep} ... {sep}{doc.query}

with ``sep`` the example separator (default a blank line) and ``delim`` the target delimiter (default one
space); the scored or generated continuation is ``delim + answer``. An empty instruction adds nothing.

Example selection is deterministic: the shots for the document at index ``i`` are drawn without
replacement by ``random.Random(f"{seed}:{i}")`` from the pool (a separate training split when the task
has one, else the evaluated documents themselves with document ``i`` left out), so a document's prompt
does not depend on which other documents are evaluated or in what order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFormat:
    """How examples are laid out (module docstring)."""

    instruction: str = ""
    example_separator: str = "\n\n"
    target_delimiter: str = " "


def select_shots(pool: Sequence, k: int, seed: int, index: int, *, same_split: bool) -> list:
    """``k`` examples from ``pool`` for the document at ``index`` (deterministic; module docstring).

    With ``same_split`` the document itself (``pool[index]``) is never chosen.

    Raises:
        ValueError: ``k < 0`` or the pool holds fewer than ``k`` usable examples.
    """
    if k < 0:
        raise ValueError(f"k: expected >= 0, got {k}")
    if k == 0:
        return []
    candidates = [j for j in range(len(pool)) if not (same_split and j == index)]
    if len(candidates) < k:
        raise ValueError(f"k={k} shots requested but the example pool holds only {len(candidates)}")
    rng = random.Random(f"{seed}:{index}")
    return [pool[j] for j in rng.sample(candidates, k)]


def build_prompt(query: str, shots: Sequence[tuple[str, str]], fmt: PromptFormat) -> str:
    """The context string for ``query`` after the solved ``shots`` (``(query, answer)`` pairs)."""
    parts = [fmt.instruction] if fmt.instruction else []
    parts += [q + fmt.target_delimiter + a for q, a in shots]
    parts.append(query)
    return fmt.example_separator.join(parts)
