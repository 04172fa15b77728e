"""On-policy preference pairs labelled by a reward model (stage kind ``align.label``).

DPO on offline pairs written by a far stronger model barely moves a small policy on its own samples:
the pairs lie where the policy puts almost no probability. The standard remedy (rejection-sampled
pairs, Liu et al. 2023 "RSO"; iterative/online DPO, Xiong et al. 2024; TRL's ``OnlineDPOTrainer``) is
to label the policy's own replies: for each training prompt the policy samples ``n_samples`` replies
(``temperature``, ``max_new_tokens``, fixed seed), the ``reward_model`` (an ``align.reward`` stage,
any tokenizer: ``training.judge.TextScorer`` scores the conversation as text) scores each, and the
best and the worst become one pair. A prompt whose best and worst scores differ by ``min_margin`` or
less (e.g. identical replies) gives no pair.

Output ``pairs.jsonl``: ``{"prompt": [messages], "chosen", "rejected", "chosen_score",
"rejected_score"}``, the preference format every stage reads (``align.dpo``: ``train:
["@label/pairs.jsonl"]``). Prompts come from ``prompts`` (preference files: their distinct prompts,
shuffled by ``seed``, the first ``max_prompts``); any prompt also found in ``exclude`` (the held-out
file) is dropped and counted, so a held-out prompt is never labelled. The manifest has the pairs, the
mean scores and lengths (words) of the chosen and rejected replies, and ``chosen_shorter``, the
fraction of pairs whose chosen reply is the shorter one: the judge's taste for length, which DPO on
these pairs will learn.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, above, opt
from lmforge.runstore import StageContext, run_config
from lmforge.training.options import device_option

logger = logging.getLogger(__name__)

STAGE = "align.label"
VERSION = 1
PAIRS = "pairs.jsonl"


@dataclass
class Config:
    """Options of ``lmforge align label``."""

    model: str = opt("@sft", "the policy: a checkpoint directory or a training stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    reward_model: str = opt("@reward", "the labelling judge: an align.reward stage or checkpoint", path=True)
    prompts: list[str] = opt([], "preference files whose prompts are labelled (.jsonl)", path=True)
    exclude: list[str] = opt([], "preference files whose prompts are never labelled (held-out)", path=True)
    out: str = opt("", "output stage directory", path=True)
    max_prompts: int = opt(0, "label at most this many distinct prompts (0 = all)")
    n_samples: int = opt(4, "replies sampled per prompt; the best and the worst make the pair")
    max_new_tokens: int = opt(48, "tokens per reply at most")
    temperature: float = opt(1.0, "sampling temperature")
    min_margin: float = opt(0.0, "keep a pair only when best − worst score exceeds this")
    seed: int = opt(0, "prompt order and sampling seed")
    device: str = device_option()
    threads: int = opt(0, "CPU threads for torch (0 = one per core)", cache=False)

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError(
                "prompts", "at least one preference file is required (--prompts '[pairs.jsonl]')"
            )
        if self.n_samples < 2:
            raise ConfigError("n_samples", f"must be >= 2 (a pair needs two replies), got {self.n_samples}")
        if self.max_new_tokens < 1 or self.max_prompts < 0 or self.min_margin < 0:
            raise ConfigError(
                "max_new_tokens",
                "max_new_tokens must be >= 1, max_prompts and min_margin >= 0, got"
                f" {self.max_new_tokens}, {self.max_prompts}, {self.min_margin}",
            )
        above(self, 0, "temperature")


INPUTS = ("model", "reward_model", "prompts", "exclude")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Sample, score and write the pairs (or return the cached result); returns the stage manifest."""
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def best_and_worst(scores: list[float]) -> tuple[int, int]:
    """``(index of the highest score, index of the lowest)``; the first of equal scores wins each."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return best, worst


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Sample ``n_samples`` replies per prompt, score them, write the best/worst pairs."""
    import numpy as np

    from lmforge.data.preferences import read_preferences
    from lmforge.data.supervised import log_problems, read_files
    from lmforge.training.judge import distinct_prompts, load_scorer, sample_replies

    def key(p: Any) -> str:
        return json.dumps(list(p), sort_keys=True)

    problems: list = []
    prompts = distinct_prompts(
        read_files(
            read_preferences, [p for k, p in sorted(ctx.inputs.items()) if k.startswith("prompts")], problems
        )
    )
    held = [p for k, p in sorted(ctx.inputs.items()) if k.startswith("exclude")]
    excluded = (
        {key(p) for p in distinct_prompts(read_files(read_preferences, held, problems))} if held else set()
    )
    log_problems(problems, "prompts")
    kept = [p for p in prompts if key(p) not in excluded]
    order = np.random.default_rng(cfg.seed).permutation(len(kept))
    chosen = [kept[i] for i in order][: cfg.max_prompts or None]
    if not chosen:
        raise ConfigError(
            "prompts", f"no prompt left to label ({len(prompts)} read, {len(prompts) - len(kept)} excluded)"
        )
    n = cfg.n_samples
    completions, tok, device = sample_replies(cfg, ctx.inputs["model"], chosen, n)
    texts = [tok.decode(c.ids, skip_special_tokens=True) for c in completions]  # as the judges read them
    judge = load_scorer(ctx.inputs["reward_model"], device)
    scores = judge([p for p in chosen for _ in range(n)], texts).tolist()
    pairs = []
    for p, prompt in enumerate(chosen):
        s = scores[p * n : (p + 1) * n]
        b, w = best_and_worst(s)
        if s[b] - s[w] > cfg.min_margin and texts[p * n + b] != texts[p * n + w]:
            pairs.append(
                {"prompt": list(prompt), "chosen": texts[p * n + b], "rejected": texts[p * n + w],
                 "chosen_score": s[b], "rejected_score": s[w]}
            )  # fmt: skip
    if not pairs:
        raise ConfigError(
            "min_margin", f"no pair: no prompt's best and worst replies differ by more than {cfg.min_margin}"
        )
    with (ctx.dir / PAIRS).open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs)

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    words = {k: [len(r[k].split()) for r in pairs] for k in ("chosen", "rejected")}
    logger.info("%d prompts × %d samples → %d pairs", len(chosen), n, len(pairs))
    return {
        "pairs": len(pairs),
        "prompts": len(chosen),
        "excluded_prompts": len(prompts) - len(kept),
        "no_pair_prompts": len(chosen) - len(pairs),
        "mean_score": mean(scores),
        "chosen_score": mean([r["chosen_score"] for r in pairs]),
        "rejected_score": mean([r["rejected_score"] for r in pairs]),
        "chosen_words": mean(words["chosen"]),
        "rejected_words": mean(words["rejected"]),
        "chosen_shorter": mean([float(c < r) for c, r in zip(words["chosen"], words["rejected"])]),
        "all_words": mean([len(t.split()) for t in texts]),
    }
