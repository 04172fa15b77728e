"""Rewards as plain functions, and a verifiable task generator (stage ``align.grpo``).

``extract_answer`` / ``correctness_reward`` / ``format_reward`` read GSM8K-style ``#### N`` answers
(else the last number); ``arithmetic_problems`` draws addition / subtraction / multiplication problems
and ``split_heldout`` holds out questions by their text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_SPACED = re.compile(r"\s*-?\d(?: \d)+\s*")  # a whole text of single-spaced digits: "5 8"


def _number(text: str) -> str:
    text = text.replace(",", "")
    return text[:-2] if text.endswith(".0") else text


def extract_answer(text: str) -> str | None:
    """The answer of a completion: the number after ``####`` (GSM8K), else the last number; None if none.
    A text that is nothing but single-spaced digits (``"5 8"``, the digit-per-token style of
    ``arithmetic_problems(reverse=True)``) is one number (``"58"``)."""
    if _SPACED.fullmatch(text):
        return text.strip().replace(" ", "")
    m = _HASHES.search(text)
    if m:
        return _number(m.group(1))
    found = _NUMBER.findall(text)
    return _number(found[-1]) if found else None


def correctness_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's answer (``extract_answer``) equals ``answer`` numerically as text, else 0."""
    got = extract_answer(completion)
    want = extract_answer(answer)
    return float(got is not None and got == want)


def format_reward(completion: str) -> float:
    """1.0 when the completion states its answer as ``#### N``, else 0."""
    return float(_HASHES.search(completion) is not None)


def arithmetic_problems(
    n: int,
    *,
    digits: int = 1,
    ops: str = "+",
    seed: int = 0,
    min_digits: int | None = None,
    reverse: bool = False,
) -> list[dict[str, str]]:
    """``n`` problems ``{"question": "3+4=", "answer": "7"}`` with ``digits``-digit operands and ``ops``.

    With ``min_digits`` each operand's length is drawn uniformly from ``min_digits..digits`` first
    (``min_digits=1, digits=2``: a quarter one-digit pairs, half mixed, a quarter two-digit pairs).
    A one-digit operand is 0-9; a longer one has no leading zero. Repeats are possible.

    ``reverse``: every number is written least-significant digit first, one digit per token (single
    spaces): ``47+38=85`` becomes ``{"question": "7 4 + 8 3 =", "answer": "5 8"}``. A decoder then
    emits each answer digit after the digits it depends on (the carry flows left to right), the
    format that lets small transformers learn addition (Lee et al. 2023, "Teaching arithmetic to
    small transformers"); and a BPE vocabulary that merges some digit pairs ("47" one token, "38"
    two) cannot make equal numbers look different. Subtraction results keep their sign in front.

    Raises:
        ValueError: ``digits < 1``, ``min_digits`` outside ``1..digits`` or an operator outside ``+-*``.
    """
    low = digits if min_digits is None else min_digits
    if digits < 1 or not 1 <= low <= digits or not ops or set(ops) - set("+-*"):
        raise ValueError(
            f"need 1 <= min_digits <= digits and ops from '+-*', got digits={digits}, "
            f"min_digits={min_digits}, ops={ops!r}"
        )
    rng = random.Random(seed)

    def operand() -> int:
        d = digits if low == digits else rng.randint(low, digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)

    def spaced(x: int) -> str:
        return ("-" if x < 0 else "") + " ".join(reversed(str(abs(x))))

    out = []
    for _ in range(n):
        a, b, op = operand(), operand(), rng.choice(ops)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        if reverse:
            out.append({"question": f"{spaced(a)} {op} {spaced(b)} =", "answer": spaced(value)})
        else:
            out.append({"question": f"{a}{op}{b}=", "answer": str(value)})
    return out


def split_heldout(
    problems: Sequence[dict[str, str]], n_heldout: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(training, held-out)``: the first ``n_heldout`` *distinct* questions of ``problems`` are held
    out (one copy each) and every copy of them is removed from the training problems, so no held-out
    question text is ever trained on.

    Raises:
        ValueError: fewer than ``n_heldout`` distinct questions.
    """
    held: dict[str, dict[str, str]] = {}
    for p in problems:
        if len(held) == n_heldout:
            break
        held.setdefault(p["question"], p)
    if len(held) < n_heldout:
        raise ValueError(f"only {len(held)} distinct questions for {n_heldout} held out")
    return [p for p in problems if p["question"] not in held], list(held.values())
