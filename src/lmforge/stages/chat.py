"""``lmforge chat``: talk to a checkpoint in the terminal over the chat template.

Each turn renders the whole conversation (optional system prompt, then the user and assistant turns)
with ``tokenizer.chat.chat_prompt`` (the server uses it too) and streams the reply from the
generation engine until ``<|end|>``. When the conversation no longer fits the model's context
(``block_size - max_new_tokens`` tokens), the oldest user/assistant turns are dropped; the system
prompt is kept. Commands: ``/reset`` forgets the history, ``/system TEXT`` sets the system prompt (and
resets), ``/quit`` or end of input leaves.

``--draft ngram | model`` decodes the replies speculatively (``inference/speculative.py``; the reply is
the one plain decoding gives) — only with ``--repetition_penalty 1``: the engine decodes plainly under a
penalty, and chat's default penalty is 1.1, so a draft asked for under a penalty is not loaded and
one warning at start says so.

Not a run-store stage: nothing is written and nothing is cached.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import ConfigError, opt, retuned
from lmforge.runstore import TOKENIZER_FILE
from lmforge.stages.decoding import DecodingOptions

STAGE = "chat"
INPUTS = ("model", "draft_model")


@dataclass
class Config(DecodingOptions):
    """Options of ``lmforge chat`` (the decoding options: ``stages/decoding.py``)."""

    model: str = retuned(DecodingOptions, "model", "")
    max_new_tokens: int = retuned(DecodingOptions, "max_new_tokens", 256)
    temperature: float = retuned(DecodingOptions, "temperature", 0.7)
    top_p: float = retuned(DecodingOptions, "top_p", 0.95)
    repetition_penalty: float = retuned(DecodingOptions, "repetition_penalty", 1.1)
    system: str = opt("", "system prompt")
    seed: int = opt(0, "sampling seed (-1 = a fresh random seed)")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Load the model and chat on stdin/stdout; returns ``{"turns": n}``."""
    if not cfg.model:
        raise ConfigError("model", "a checkpoint is required (e.g. --model runs/tiny/pretrain)")
    draft: Any = None if cfg.draft == "none" else cfg.draft
    if draft is not None and cfg.repetition_penalty != 1:
        print(
            f"lmforge chat: warning: --draft {cfg.draft} is not used: repetition_penalty "
            f"{cfg.repetition_penalty:g} != 1 decodes plainly (chat's default is 1.1); pass "
            "--repetition_penalty 1 to decode speculatively",
            file=sys.stderr,
            flush=True,
        )
        draft = None
    from lmforge.inference.engine import Engine
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.runtime import create_runtime
    from lmforge.tokenizer.train import load_tokenizer

    rt = create_runtime(cfg.device, "fp32", seed=max(cfg.seed, 0))
    ckpt = resolve_checkpoint(Path(cfg.model).expanduser(), cfg.checkpoint)
    model, _ = load_model(ckpt, device=rt.device)
    tok = load_tokenizer(ckpt / TOKENIZER_FILE)
    if draft == "model":
        from lmforge.inference.speculative import load_draft

        draft = load_draft(Path(cfg.draft_model).expanduser(), cfg.checkpoint, model, tok)
    engine = Engine(model, tok, weights=cfg.weights, draft=draft, draft_tokens=cfg.draft_tokens)
    using = f", draft {cfg.draft}" if draft is not None else ""
    print(f"lmforge chat: {ckpt}{using} — /reset, /system TEXT, /quit", flush=True)
    turns = chat_loop(engine, cfg, _lines(), lambda s: print(s, end="", flush=True))
    return {"turns": turns}


def _lines() -> Iterable[str]:
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return


def chat_loop(engine: Any, cfg: Config, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """Run the conversation over ``lines`` (user inputs), streaming replies to ``write``; returns the
    number of assistant turns."""
    from lmforge.tokenizer.chat import chat_ids, chat_prompt

    tok = engine.tokenizer
    end = chat_ids(tok)["end"]
    stop_ids = {end, chat_ids(tok)["bos"]}
    system, history, turns = cfg.system, [], 0
    budget = engine.block_size - cfg.max_new_tokens
    for line in lines:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/reset" or text.startswith("/system"):
            system = text[len("/system") :].strip() if text.startswith("/system") else system
            history = []
            write("(history cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        head = [{"role": "system", "content": system}] if system else []
        ids, kept = chat_prompt(tok, head + history, budget)  # drops the oldest exchanges to fit
        history = kept[len(head) :]
        params = cfg.sampling_params(seed=None if cfg.seed < 0 else cfg.seed + turns, stop_ids=stop_ids)
        write("model> ")
        reply = ""
        for event in engine.stream([ids], params):
            reply += event.text
            write(event.text)
        write("\n")
        history.append({"role": "assistant", "content": reply})
        turns += 1
    return turns


def cli(argv: list[str]) -> int:
    """``lmforge chat [RECIPE.yaml] [options]``: parse options like every stage, then chat."""
    from lmforge.stages.invoke import invoke_interactive

    return invoke_interactive("chat", sys.modules[__name__], argv, quiet=True)
