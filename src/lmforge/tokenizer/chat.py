"""The chat template: the one place that turns a conversation into token ids and a loss mask.

Format (special tokens are single ids; nothing else is added, not even newlines)::

    <|bos|><|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

- ``<|bos|>`` once, then each message as ``<|role|>`` + content + ``<|end|>``; roles are ``system``
  (at most one, first), ``user`` and ``assistant``.
- ``add_generation_prompt=True`` appends ``<|assistant|>``: the model continues with the reply, and a
  chat engine stops when it samples ``<|end|>``.
- Content is encoded with special-token matching off, so a message containing the text
  ``<|assistant|>`` or ``<|end|>`` is ordinary text and cannot forge a turn.
- The loss mask is True exactly on the tokens of assistant content and on the ``<|end|>`` closing an
  assistant turn (so the model learns when to stop); ``mask[i]`` says whether ``ids[i]`` is a
  supervised *target* — a trainer predicting ``ids[1:]`` from ``ids[:-1]`` uses ``mask[1:]``.

SFT, alignment, chat and the server all call ``render_chat``; ``chat_prompt`` (chat and the server)
asks for the assistant's next turn within a token budget, dropping the oldest turns; ``CHAT_TEMPLATE_JINJA`` renders the same
text for Hugging Face ``apply_chat_template`` (``hf_tokenizer_config`` puts it in
``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from lmforge.errors import InputError
from lmforge.tokenizer.train import CHAT_TOKENS, SPECIAL_TOKENS, special_id

ROLES = ("system", "user", "assistant")
CONFIG_FILE = "tokenizer_config.json"

CHAT_TEMPLATE_JINJA = (
    "{{ '<|bos|>' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _check(messages: Sequence[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"messages[{i}]: expected {{'role', 'content'}}, got {message!r}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: role {role!r}; valid: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ValueError(f"messages[{i}]: a system message may only come first")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]: content must be a string, got {type(content).__name__}")


def chat_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of ``bos``, the roles and ``end`` in ``tok``.

    Raises:
        InputError: ``tok`` lacks the chat tokens (trained before they existed, or without them).
    """
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise InputError(
            f"tokenizer lacks chat token(s) {missing}; retrain it with the default special tokens"
        )
    return {"bos": special_id(tok, "bos"), **{name: special_id(tok, name) for name in (*ROLES, "end")}}


def render_chat(
    tok: Tokenizer, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Render a conversation into token ids and the loss mask (format: module docstring).

    Args:
        tok: an lmforge tokenizer with chat tokens.
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
        add_generation_prompt: end with ``<|assistant|>`` for the model to continue.

    Returns:
        ``(ids, mask)`` of equal length; ``mask[i]`` is True when ``ids[i]`` is assistant content or
        the ``<|end|>`` of an assistant turn.

    Raises:
        ValueError: a malformed message (unknown role, non-string content, system not first).
        InputError: ``tok`` lacks the chat tokens.
    """
    _check(messages)
    encoded = _encode_contents(tok, [m["content"] for m in messages])
    return _assemble(chat_ids(tok), messages, encoded, add_generation_prompt)


def _encode_contents(tok: Tokenizer, contents: list[str]) -> list[list[int]]:
    """The ids of each content, encoded once with special-token matching off (content is data: special-token
    text in it stays text). ``tok`` is only written when its setting differs, so a tokenizer kept with
    ``encode_special_tokens=True`` can be shared by threads (setting it while another thread encodes fails)."""
    if not contents:
        return []
    was = tok.encode_special_tokens
    if not was:
        tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch(contents, add_special_tokens=False)]
    finally:
        if not was:
            tok.encode_special_tokens = False


def _assemble(
    special: dict[str, int],
    messages: Sequence[dict[str, Any]],
    encoded: Sequence[list[int]],
    add_generation_prompt: bool,
) -> tuple[list[int], list[bool]]:
    ids, mask = [special["bos"]], [False]
    for message, content in zip(messages, encoded):
        supervised = message["role"] == "assistant"
        ids += [special[message["role"]], *content, special["end"]]
        mask += [False, *[supervised] * len(content), supervised]
    if add_generation_prompt:
        ids.append(special["assistant"])
        mask.append(False)
    return ids, mask


def chat_prompt(
    tok: Tokenizer, messages: Sequence[dict[str, Any]], budget: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """The ids that ask for the assistant's next turn of ``messages``, within ``budget`` tokens.

    Renders with ``add_generation_prompt=True``; while the ids exceed ``budget``, the oldest exchange
    (two messages, or the one left before the last) after the system message is dropped. The last
    message always stays, so the ids can still exceed ``budget``: the caller decides what then.
    Linear in the conversation: each message is encoded once and the dropping runs on token counts
    (a message renders to ``<|role|>`` + content + ``<|end|>`` whatever its neighbours).

    Returns:
        ``(ids, kept)``: the prompt ids and the messages they render (the system message included).
    """
    _check(messages)
    special = chat_ids(tok)
    encoded = _encode_contents(tok, [m["content"] for m in messages])
    head = 1 if messages and messages[0]["role"] == "system" else 0
    total = 2 + sum(len(e) + 2 for e in encoded)  # <|bos|> ... <|assistant|>
    start = head
    while total > budget and len(messages) - start > 1:
        step = 2 if len(messages) - start > 2 else 1
        total -= sum(len(e) + 2 for e in encoded[start : start + step])
        start += step
    kept = [*messages[:head], *messages[start:]]
    ids, _ = _assemble(special, kept, [*encoded[:head], *encoded[start:]], add_generation_prompt=True)
    return ids, kept


def render_chat_text(messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False) -> str:
    """The text ``render_chat`` encodes (what ``CHAT_TEMPLATE_JINJA`` renders), for display and interop."""
    _check(messages)
    body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return "<|bos|>" + body + ("<|assistant|>" if add_generation_prompt else "")


def parse_chat(tok: Tokenizer, ids: Sequence[int]) -> list[dict[str, str]]:
    """Invert ``render_chat``: ids → messages (a trailing open turn, e.g. a generation, is included).

    Content is decoded with ``tok``, so the round trip is exact for byte-level BPE.

    Raises:
        ValueError: ids that do not follow the format (no leading ``<|bos|>``, content outside a turn,
            a role token inside a turn).
        InputError: ``tok`` lacks the chat tokens.
    """
    special = chat_ids(tok)
    role_of = {special[r]: r for r in ROLES}
    if not ids or ids[0] != special["bos"]:
        raise ValueError("chat ids must start with <|bos|>")
    messages: list[dict[str, str]] = []
    role: str | None = None
    content: list[int] = []
    for i, token in enumerate(ids[1:], start=1):
        if token in role_of:
            if role is not None:
                raise ValueError(f"ids[{i}]: role token {token} inside an open {role} turn")
            role, content = role_of[token], []
        elif token == special["end"]:
            if role is None:
                raise ValueError(f"ids[{i}]: <|end|> outside a turn")
            messages.append({"role": role, "content": tok.decode(content, skip_special_tokens=False)})
            role = None
        elif role is None:
            raise ValueError(f"ids[{i}] = {token} is outside a turn (expected a role token)")
        else:
            content.append(token)
    if role is not None:
        messages.append({"role": role, "content": tok.decode(content, skip_special_tokens=False)})
    return messages


def hf_tokenizer_config(tok: Tokenizer) -> dict[str, Any]:
    """A ``tokenizer_config.json`` for ``transformers.PreTrainedTokenizerFast`` with the chat template."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[2],
        "clean_up_tokenization_spaces": False,
    }
    if all(tok.token_to_id(t) is not None for t in CHAT_TOKENS):
        config["chat_template"] = CHAT_TEMPLATE_JINJA
    for name in ("unk", "mask", "cls", "sep"):
        token = f"[{name.upper()}]"
        if tok.token_to_id(token) is not None:
            config[f"{name}_token"] = token
    return config


def with_bos(tok: Tokenizer, bos_id: int | None) -> Tokenizer:
    """A copy of ``tok`` whose post-processor puts ``<|bos|>`` first, as lmforge does before every
    document and prompt, for an exported ``tokenizer.json``: ``tokenizer(prompt)`` in ``transformers``
    then gives the ids ``lmforge generate`` feeds the model (``add_special_tokens=False``, and
    ``apply_chat_template``, whose template starts with ``<|bos|>``, add nothing). A post-processor
    already there (byte-level offsets) is kept, first. ``without_bos`` undoes it on import."""
    out = Tokenizer.from_str(tok.to_str())
    if bos_id is None:
        return out
    out.post_processor = (
        _bos_template(bos_id)
        if out.post_processor is None
        else processors.Sequence([out.post_processor, _bos_template(bos_id)])
    )
    return out


def without_bos(tok: Tokenizer) -> Tokenizer:
    """``tok`` without the ``<|bos|>`` post-processor ``with_bos`` adds (lmforge prepends it itself), so an
    export imported back has the original tokenizer; any other post-processor is left as it is."""
    bos_id = tok.token_to_id(SPECIAL_TOKENS[0])
    if bos_id is None or tok.post_processor is None:
        return tok
    ours = json.loads(with_bos(Tokenizer.from_str(_without_post_processor(tok)), bos_id).to_str())[
        "post_processor"
    ]
    state = json.loads(tok.to_str())
    found = state["post_processor"]
    if found == ours:
        state["post_processor"] = None
    elif found.get("type") == "Sequence" and len(found["processors"]) == 2 and found["processors"][1] == ours:
        state["post_processor"] = found["processors"][0]
    else:
        return tok
    return Tokenizer.from_str(json.dumps(state))


def _without_post_processor(tok: Tokenizer) -> str:
    state = json.loads(tok.to_str())
    state["post_processor"] = None
    return json.dumps(state)


def _bos_template(bos_id: int) -> Any:
    return processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS[0]} $A",
        pair=f"{SPECIAL_TOKENS[0]} $A $B:1",
        special_tokens=[(SPECIAL_TOKENS[0], bos_id)],
    )


def save_hf_config(tok: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write ``hf_tokenizer_config(tok)`` to ``directory/tokenizer_config.json``; returns the path."""
    path = Path(directory) / CONFIG_FILE
    path.write_text(json.dumps(hf_tokenizer_config(tok), indent=1) + "\n", encoding="utf-8")
    return path
