"""Reader for preference data: a prompt and two responses, one preferred (DPO, reward models).

Every record becomes one or more ``Preference(prompt, chosen, rejected, where)``: ``prompt`` is the
conversation so far (``[{"role", "content"}, ...]``, ending with a user turn), ``chosen`` and
``rejected`` are the two candidate assistant replies. JSONL (optionally ``.gz``/``.zst``/``.bz2``), one
record per line, in any of these schemas:

- ``{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}`` — when the
  responses are message lists they are the assistant turns that follow the prompt;
- ``{"messages": [...], "chosen": str | {"role": "assistant", "content"}, "rejected": ...}``;
- ``{"chosen": messages, "rejected": messages}`` — two whole conversations that share a prefix and
  differ in the last assistant turn (the TRL/UltraFeedback layout);
- ``{"chosen": str, "rejected": str}`` in Anthropic HH-RLHF's text format
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``): the turns are split on those markers, the shared turns
  up to the last ``Assistant:`` are the prompt;
- full rankings ``{"prompt", "responses": [str, ...], "ranking": [i, ...]}`` (indices, best first):
  every implied pair (best over each worse one, ...), ``K·(K-1)/2`` pairs per record.

An optional ``"system"`` string becomes the system turn. A record that fits none of these, has wrong
types, identical chosen and rejected replies, or (text format) no final assistant turn is reported as
a ``data.readers.Problem`` naming ``file:line`` and skipped; the good records are kept.

``read_rankings`` reads the same files as whole rankings (``Ranking``: the prompt and its replies best
first; a pair is a ranking of two), for reward models trained on the Plackett–Luce likelihood;
``read_preferences`` is every ranking expanded into its implied pairs. ``read_prompts`` reads only
the prompts (distinct, file order) of a ``.txt`` file (one per line) or of any JSONL above, or of
``{"prompt"}`` / ``{"messages"}`` records.

Rankings people submit (the store behind ``align collect``'s page): ``ranking_record`` validates one
submission (every response ranked once, known ids, criteria scores 1–5, an annotator id) into the
full-ranking schema above; ``append_record`` appends it to a JSONL store atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from lmforge.data.readers import Problem, skip
from lmforge.data.supervised import Messages, _check_file, _json_records, file_format
from lmforge.errors import InputError

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Preference:
    """One comparison: after ``prompt`` the reply ``chosen`` is preferred to ``rejected``."""

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    where: str = ""

    def conversation(self, which: str) -> Messages:
        """The prompt followed by the ``chosen`` or ``rejected`` reply as an assistant turn."""
        reply = {"chosen": self.chosen, "rejected": self.rejected}[which]
        return [*map(dict, self.prompt), {"role": "assistant", "content": reply}]


def parse_hh(text: str) -> Messages:
    """Split HH-RLHF text (``"\\n\\nHuman: a\\n\\nAssistant: b"``) into messages.

    Raises:
        ValueError: the text does not start with a ``Human:``/``Assistant:`` marker.
    """
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("expected HH-RLHF text starting with '\\n\\nHuman: '")
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def _messages(value: Any, key: str) -> Messages:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError(f"'{key}' must be a string or a list of {{role, content}} with string content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(value: Any, key: str) -> str:
    """An assistant reply given as a string, a message, or a list of messages (the last one)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    messages = _messages(value, key)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"'{key}' must end with an assistant message")
    return messages[-1]["content"]


def _split_pair(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Shared prefix (the prompt) and the two final assistant replies of two whole conversations."""
    for conv, key in ((chosen, "chosen"), (rejected, "rejected")):
        if not conv or conv[-1]["role"] != "assistant":
            raise ValueError(f"'{key}' has no final assistant turn")
    prompt_c, prompt_r = chosen[:-1], rejected[:-1]
    if prompt_c != prompt_r:
        raise ValueError("'chosen' and 'rejected' differ before their last assistant turn")
    return prompt_c, chosen[-1]["content"], rejected[-1]["content"]


@dataclass(frozen=True)
class Ranking:
    """After ``prompt`` the ``responses`` are ordered best first (a chosen/rejected pair is two)."""

    prompt: tuple[dict[str, str], ...]
    responses: tuple[str, ...]
    where: str = ""

    def pairs(self) -> list[Preference]:
        """Every implied comparison: each response over each one ranked below it, ``K·(K−1)/2``."""
        return [Preference(self.prompt, a, b, self.where) for a, b in combinations(self.responses, 2)]


def to_ranking(record: dict[str, Any]) -> tuple[Messages, list[str]]:
    """``(prompt, responses best first)`` of one record (schemas: module docstring).

    Raises:
        ValueError: the record fits no schema or has wrong types; the message says what was expected.
    """
    system = record.get("system")
    head: Messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    if "responses" in record or "ranking" in record:
        responses, ranking = record.get("responses"), record.get("ranking")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise ValueError("'responses' must be a list of strings")
        if (
            not isinstance(ranking, list)
            or sorted(ranking) != list(range(len(responses)))
            or len(responses) < 2
        ):
            raise ValueError(
                f"'ranking' must order all {len(responses)} response indices, best first (e.g. [2, 0, 1])"
            )
        prompt = record.get("prompt")
        msgs = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")
        )
        return head + msgs, [responses[i] for i in ranking]
    if "chosen" not in record or "rejected" not in record:
        raise ValueError(
            f"no preference schema matches keys {sorted(record)}; valid: prompt/chosen/rejected, "
            "messages/chosen/rejected, chosen/rejected conversations, HH-RLHF text, prompt/responses/ranking"
        )
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record or "messages" in record:
        key = "prompt" if "prompt" in record else "messages"
        prompt = record[key]
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, key)
        return head + msgs, [_reply(chosen, "chosen"), _reply(rejected, "rejected")]
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, c, r = _split_pair(parse_hh(chosen), parse_hh(rejected))
    else:
        prompt, c, r = _split_pair(_messages(chosen, "chosen"), _messages(rejected, "rejected"))
    return head + prompt, [c, r]


def read_rankings(path: str | Path, problems: list[Problem] | None = None) -> list[Ranking]:
    """Every record of a JSONL file as a ``Ranking`` (schemas: module docstring); bad records reported
    and skipped.

    Raises:
        InputError: the file is missing, unreadable or not JSONL.
    """
    path = _check_file(Path(path))
    name = str(path)
    if file_format(path)[0] != "jsonl":
        raise InputError(f"{path}: preferences are read from .jsonl files (optionally compressed)")
    out: list[Ranking] = []
    for number, record in _json_records(path, problems):
        try:
            prompt, ordered = to_ranking(record)
            if not prompt or prompt[-1]["role"] != "user":
                raise ValueError("the prompt must end with a user turn")
            if len(set(ordered)) != len(ordered):
                raise ValueError(
                    "'chosen' and 'rejected' are the same reply"
                    if len(ordered) == 2
                    else "two ranked responses are the same reply"
                )
        except (ValueError, KeyError) as exc:
            skip(problems, name, number, str(exc))
            continue
        out.append(Ranking(tuple(prompt), tuple(ordered), f"{name}:{number}"))
    return out


def read_preferences(path: str | Path, problems: list[Problem] | None = None) -> list[Preference]:
    """Every comparison in a JSONL file (schemas: module docstring), a ranking's implied pairs in
    order; bad records reported and skipped.

    Raises:
        InputError: the file is missing, unreadable or not JSONL.
    """
    return [pair for ranking in read_rankings(path, problems) for pair in ranking.pairs()]


def read_prompts(path: str | Path, problems: list[Problem] | None = None) -> list[Messages]:
    """The distinct prompts of a file, in file order: a ``.txt`` file holds one user prompt per line;
    a JSONL record is ``{"prompt": str | messages}``, ``{"messages": [...]}`` or any preference schema.

    Raises:
        InputError: the file is missing or unreadable.
    """
    path = _check_file(Path(path))
    found: list[Messages] = []
    if file_format(path)[0] == "jsonl":
        for number, record in _json_records(path, problems):
            try:
                if "chosen" in record or "responses" in record:
                    prompt = to_ranking(record)[0]
                else:
                    key = "prompt" if "prompt" in record else "messages"
                    value = record.get(key)
                    prompt = (
                        [{"role": "user", "content": value}]
                        if isinstance(value, str)
                        else _messages(value, key)
                    )
                if not prompt or prompt[-1]["role"] != "user":
                    raise ValueError("the prompt must end with a user turn")
            except (ValueError, KeyError) as exc:
                skip(problems, str(path), number, str(exc))
                continue
            found.append(prompt)
    else:
        text = path.read_text(encoding="utf-8")
        found = [[{"role": "user", "content": line.strip()}] for line in text.splitlines() if line.strip()]
    distinct = {tuple(tuple(sorted(m.items())) for m in p): p for p in found}
    return list(distinct.values())


# --------------------------------------------------------------------------------------------------
# rankings submitted by people (the store behind align collect's ranking page)

CRITERIA = ("accuracy", "relevance", "coherence")


def ranking_record(
    prompt: str | list[dict[str, str]],
    responses: dict[str, str],
    ranks: dict[str, Any],
    *,
    annotator: str,
    criteria: dict[str, dict[str, Any]] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Validate one person's ranking of ``responses`` (id → text) and return the record to store.

    ``ranks`` maps every response id to its rank, 1 = best, each rank used once. ``criteria``
    optionally scores responses on ``CRITERIA`` from 1 to 5. The record is the full-ranking schema
    ``read_preferences`` reads (``responses`` in id order, ``ranking`` best first) plus ``ids``,
    ``annotator``, ``criteria`` and ``note``.

    Raises:
        ValueError: a missing, duplicate, out-of-range or non-integer rank, an unknown response id, an
            empty annotator, or a bad criterion score; the message names the offending entry.
    """
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError("annotator: a non-empty annotator id is required")
    ids = sorted(responses)
    if len(ids) < 2:
        raise ValueError(f"responses: need at least two to rank, got {len(ids)}")
    unknown = sorted(set(ranks) - set(ids))
    if unknown:
        raise ValueError(f"unknown response id(s) {unknown}; valid: {ids}")
    missing = [i for i in ids if i not in ranks]
    if missing:
        raise ValueError(f"missing rank for response(s) {missing}; rank every response 1..{len(ids)}")
    for i, r in ranks.items():
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= len(ids):
            raise ValueError(f"rank of {i!r} must be an integer in 1..{len(ids)}, got {r!r}")
    if len(set(ranks.values())) != len(ids):
        dup = sorted({r for r in ranks.values() if list(ranks.values()).count(r) > 1})
        raise ValueError(f"duplicate rank(s) {dup}; each of 1..{len(ids)} must be used once")
    for i, scores in (criteria or {}).items():
        if i not in responses:
            raise ValueError(f"criteria: unknown response id {i!r}; valid: {ids}")
        for name, value in scores.items():
            if (
                name not in CRITERIA
                or isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= 5
            ):
                raise ValueError(
                    f"criteria[{i!r}][{name!r}]: expected one of {CRITERIA} scored 1..5, got {value!r}"
                )
    return {
        "prompt": prompt,
        "ids": ids,
        "responses": [responses[i] for i in ids],
        "ranking": sorted(range(len(ids)), key=lambda k: ranks[ids[k]]),
        "annotator": annotator.strip(),
        "criteria": criteria or {},
        "note": note,
    }


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSONL line, atomically with respect to other writers and crashes.

    The line is written by a single ``write`` on an ``O_APPEND`` descriptor under an exclusive
    ``flock`` and fsynced before returning, so concurrent annotators never interleave and a crash can
    at worst leave a partial *last* line, which ``read_preferences`` reports and skips; the next
    append starts a new line after such a fragment, so it never glues a good record onto it.
    """
    import fcntl
    import json
    import os

    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line (needs a readable fd)
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
