"""Judging replies as text: a reward model with its own tokenizer, and a policy's win rate over its start.

- ``TextScorer``: an ``align.reward`` model and the tokenizer it was trained with, scoring
  ``(prompt messages, reply text)`` pairs. It renders each conversation exactly as the reward stage
  encoded its pairs (``training.logprobs.encode_response``, cut to the stage's ``max_len``), so a reward model
  whose vocabulary differs from the policy's (an imported encoder such as MiniLM) judges a decoder's
  replies: the policy's ids are decoded to text and re-tokenised.
- ``WinRate``: replies of the starting model to a fixed prompt set, sampled once (fixed seed) and
  scored by every judge; calling it with the current policy samples the policy's replies with the same
  seed and reports the win rate per judge (ties ½; at the start every reply ties, 0.5) and the
  policy's KL to the reference over its own replies. The first judge is the headline (keys
  ``win_rate``, ``policy_score``, ``base_score``); any other judge is a second signal that does not
  drive training (keys prefixed with its name), so a policy that hacks the first shows it; so does
  ``policy_words`` beside ``base_words``, the replies' mean length in words.

Shape notation: P prompts, T tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.inference.engine import Engine
from lmforge.inference.rows import SamplingParams
from lmforge.model import checkpoint as ckpt
from lmforge.runstore import TOKENIZER_FILE
from lmforge.tokenizer.chat import render_chat
from lmforge.tokenizer.texts import pad_batch
from lmforge.tokenizer.train import load_tokenizer, special_id
from lmforge.training.logprobs import encode_response
from lmforge.training.reward_model import RewardModel, load_reward_model
from lmforge.training.rollouts import rollout

logger = logging.getLogger(__name__)

Messages = Sequence[dict[str, str]]
CHUNK = 32  # prompts sampled and scored at once by WinRate


def distinct_prompts(prefs: Sequence[Any]) -> list[Messages]:
    """The distinct prompts of ``data.preferences.Preference``\\ s, in order (a prompt shared by several
    pairs is judged once)."""
    return list({json.dumps(p.prompt, sort_keys=True): p.prompt for p in prefs}.values())


@dataclass
class TextScorer:
    """``scorer(prompts, replies)`` → reward ``[P]`` of each ``prompt + reply`` conversation.

    ``max_len`` is the reward stage's sequence length (conversations cut as it cut its pairs: the
    prompt from the left first).
    """

    rm: RewardModel
    tok: Any
    max_len: int
    batch_size: int = 32

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Messages], replies: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts for {len(replies)} replies")
        pad_id = special_id(self.tok, "pad")
        device = next(self.rm.parameters()).device
        rows = [encode_response(self.tok, list(p), r, self.max_len - 1)[0] for p, r in zip(prompts, replies)]
        out = []
        for s in range(0, len(rows), self.batch_size):
            idx, mask = pad_batch(rows[s : s + self.batch_size], pad_id)
            out.append(self.rm(idx.to(device), mask.to(device)).float())
        return torch.cat(out) if out else torch.zeros(0)


def load_scorer(path: Path, device: str | torch.device = "cpu") -> TextScorer:
    """The ``TextScorer`` of an ``align.reward`` stage or checkpoint (its best checkpoint for a stage)."""
    from lmforge.model.checkpoint import META_FILE

    dir = ckpt.resolve_checkpoint(Path(path), "best")
    rm = load_reward_model(dir).to(device).requires_grad_(False)
    meta = json.loads((dir / META_FILE).read_text())
    max_len = int(meta.get("max_len") or rm.config.block_size)  # reward models saved before max_len was kept
    return TextScorer(rm, load_tokenizer(dir / TOKENIZER_FILE), max_len)


class WinRate:
    """The starting model's replies to ``prompts``, sampled and judged once; ``__call__(policy,
    reference)`` judges the policy's replies to the same prompts (module docstring).

    Args:
        model: the starting model (the base the policy is compared with), sampled now.
        tok: the policy's tokenizer.
        prompts: the judged prompts (message lists ending with a user turn).
        judges: name → scorer of ``(prompts, reply texts)``; the first is the headline (none: KL only).
        max_new_tokens, temperature, seed: sampling (the same for the base and every later policy).
    """

    def __init__(
        self,
        model: nn.Module,
        tok: Any,
        prompts: Sequence[Messages],
        judges: Mapping[str, Callable[[Sequence[Messages], Sequence[str]], torch.Tensor]],
        *,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        seed: int = 0,
    ):
        if not prompts:
            raise ValueError("no prompts to judge")
        self.tok, self.prompts, self.judges = tok, [list(p) for p in prompts], dict(judges)
        self.pad_id, end_id = special_id(tok, "pad"), special_id(tok, "end")
        block = model.config.block_size
        self.ids = [
            render_chat(tok, p, add_generation_prompt=True)[0][-(block - max_new_tokens) :] for p in prompts
        ]
        self.params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop_ids=frozenset({end_id})
        )
        self.base_replies = self.replies(model)[0]
        self.base_scores = {
            name: judge(self.prompts, self.base_replies) for name, judge in self.judges.items()
        }

    @torch.no_grad()
    def replies(self, model: nn.Module, reference: Any = None) -> tuple[list[str], torch.Tensor | None]:
        """``(reply texts, summed log π − log π_ref of each reply [P] or None without a reference)`` of
        ``model``, sampled in chunks of ``CHUNK`` prompts (the log-probabilities of a whole chunk are held)."""
        was = model.training
        model.eval()
        texts: list[str] = []
        kls = []
        try:
            for s in range(0, len(self.ids), CHUNK):
                params = replace(self.params, seed=self.params.seed + s)  # row i always draws from seed + i
                ro = rollout(
                    Engine(model, self.tok), self.ids[s : s + CHUNK], lambda i, c: 0.0, group_size=1,
                    params=params, pad_id=self.pad_id, reference=reference,
                )  # fmt: skip
                texts += [self.tok.decode(c.ids, skip_special_tokens=True) for c in ro.completions]
                if reference is not None:
                    kls.append(((ro.old_logp - ro.ref_logp) * ro.m).sum(dim=1))
        finally:
            model.train(was)
        return texts, torch.cat(kls) if kls else None

    @torch.no_grad()
    def __call__(self, policy: nn.Module, reference: Any) -> dict[str, float]:
        """Win rate per judge and ``kl``: the policy's summed ``log π − log π_ref`` over its own replies,
        averaged (a sample estimate of KL(π ‖ π_ref) per reply); ``reference`` is a ``training.logprobs.Reference``."""
        texts, kl = self.replies(policy, reference)
        out: dict[str, float] = {
            "kl": float(kl.mean()),
            "policy_words": sum(len(t.split()) for t in texts) / len(texts),  # length: a common reward hack
            "base_words": sum(len(t.split()) for t in self.base_replies) / len(texts),
        }
        for i, (name, judge) in enumerate(self.judges.items()):
            mine, base = judge(self.prompts, texts), self.base_scores[name]
            wins = (mine > base).float() + 0.5 * (mine == base).float()
            prefix = "" if i == 0 else f"{name}_"
            out |= {
                f"{prefix}win_rate": float(wins.mean()),
                f"{prefix}policy_score": float(mine.mean()),
                f"{prefix}base_score": float(base.mean()),
            }
        return out


def sample_replies(
    cfg: Any,
    model: Path,
    prompts: list[Any],
    n: int,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[list[Any], Any, Any]:
    """``(completions, tokenizer, device)``: ``n`` sampled replies to each prompt (row ``p·n + g``) from
    ``model`` (a checkpoint or training stage directory). ``cfg`` has ``device``, ``seed``, ``threads``, ``checkpoint``,
    ``max_new_tokens`` and ``temperature`` (``align.collect``, ``align.label``); chunks of 32 rows, row
    ``i`` drawn from ``seed`` + its chunk's start."""
    from lmforge.errors import ConfigError
    from lmforge.runtime import create_runtime

    rt = create_runtime(cfg.device, "fp32", cfg.seed, cfg.threads)
    ckpt_dir = ckpt.resolve_checkpoint(Path(model), cfg.checkpoint)
    policy, mcfg = ckpt.load_model(ckpt_dir, device=rt.device)
    policy.eval()
    tok = load_tokenizer(ckpt_dir / TOKENIZER_FILE)
    budget = mcfg.block_size - cfg.max_new_tokens
    if budget < 1:
        raise ConfigError("max_new_tokens", f"must be < the model's block_size {mcfg.block_size}")
    engine = Engine(policy, tok)
    rows = [
        render_chat(tok, list(p), add_generation_prompt=True)[0][-budget:] for p in prompts for _ in range(n)
    ]
    out: list[Any] = []
    chunk = 32
    for start in range(0, len(rows), chunk):
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=top_k,
            top_p=top_p,
            seed=cfg.seed + start,
            stop_ids=frozenset({special_id(tok, "end")}),
        )
        out += engine.generate(rows[start : start + chunk], params)
        logger.debug("sampled %d of %d replies", len(out), len(rows))
    return out, tok, rt.device
