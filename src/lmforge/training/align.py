"""Alignment pieces shared by the ``align.*`` stages: response log-probabilities, a frozen reference,
the DPO / reward-model / GRPO losses as small pure functions, the reward model, and verifiable rewards.

- ``encode_response``: prompt + reply through ``render_chat``; the mask covers the *last* assistant
  turn only (the reply being judged), so earlier assistant turns of a multi-turn prompt carry nothing.
- ``token_logprobs`` / ``sequence_logprobs``: log p(reply | prompt) per token ``[B, T]`` and summed per
  row ``[B]`` under a decoder.
- ``Reference``: the frozen reference model of DPO, GRPO and PPO — the policy with its LoRA adapters
  disabled (no copy) or, for a fully fine-tuned policy, a frozen copy taken at construction.
- ``dpo_loss``: DPO (Rafailov et al. 2023, eq. 7) with the sigmoid loss, or IPO (Azar et al. 2023).
- ``bradley_terry_loss`` / ``plackett_luce_loss``: reward-model likelihoods (Bradley & Terry 1952;
  Plackett 1975, Luce 1959; Ouyang et al. 2022 train on all implied pairs of a ranking).
- ``RewardModel``: a trunk (decoder or encoder) + ``model.heads.ScalarHead`` on the last real token
  (``training.judge`` scores reply texts with it and measures win rates).
- ``group_advantages`` / ``clipped_policy_loss`` / ``kl_k3``: GRPO (Shao et al. 2024, DeepSeekMath §4);
  ``keep_groups``: DAPO's dynamic sampling; ``rollout`` samples through the inference engine (GRPO and PPO; PPO's own pieces: ``training.ppo``).
- ``extract_answer`` / ``correctness_reward`` / ``format_reward`` / ``arithmetic_problems`` /
  ``split_heldout``: rewards as plain functions, a verifiable task generator (GSM8K-style ``#### N``
  answers) and its held-out split by question text.

Shape notation: B batch (rows), T tokens, P prompts, G samples per prompt, K ranked responses.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.heads import ScalarHead

REWARD_HEAD = "reward"

# --------------------------------------------------------------------------------------------------
# responses and their log-probabilities


def encode_response(
    tok: Any, prompt: Sequence[dict[str, str]], reply: str, block_size: int
) -> tuple[list[int], list[bool]]:
    """``(ids, mask)`` of ``prompt`` + the assistant ``reply``; ``mask`` marks the reply's tokens and its
    closing ``<|end|>`` (targets, as ``render_chat``). At most ``block_size + 1`` tokens: the prompt
    loses tokens from the left first, then the reply is cut at the right.
    """
    from lmforge.tokenizer.chat import render_chat

    ids, mask = render_chat(tok, [*prompt, {"role": "assistant", "content": reply}])
    start = len(render_chat(tok, prompt, add_generation_prompt=True)[0])
    mask = [m and i >= start for i, m in enumerate(mask)]
    limit = block_size + 1
    if len(ids) > limit:
        cut = min(len(ids) - limit, max(start - 1, 0))  # drop prompt tokens (left), keep one to condition on
        ids, mask = ids[cut:][:limit], mask[cut:][:limit]
    return ids, mask


def token_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(y[b, t] | x[b, :t+1])`` ``[B, T]`` in fp32 under a decoder (``lm_batch`` layout)."""
    logits = model(x).float()  # [B, T, V]
    return -F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, T]


def sequence_logprobs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed log-probability of the masked targets [B], their count [B])`` of each row."""
    lp = token_logprobs(model, x, y)
    return (lp * m).sum(dim=1), m.sum(dim=1)


class Reference:
    """The frozen reference policy of ``policy``: its LoRA adapters disabled, or a frozen copy.

    With LoRA (``model.lora.apply_lora`` before this) nothing is copied: ``disable_lora`` computes the
    base weights exactly. Otherwise the policy is deep-copied *now*, in eval mode, every parameter
    ``requires_grad=False``. Calls are ``torch.no_grad``.
    """

    def __init__(self, policy: nn.Module):
        from lmforge.model.lora import lora_modules

        self.policy = policy
        self.uses_lora = bool(lora_modules(policy))
        self.model = None if self.uses_lora else copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def token_logprobs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``token_logprobs`` under the reference ``[B, T]``."""
        if self.model is not None:
            return token_logprobs(self.model, x, y)
        from lmforge.model.lora import disable_lora

        was = self.policy.training
        self.policy.eval()
        try:
            with disable_lora(self.policy):
                return token_logprobs(self.policy, x, y)
        finally:
            self.policy.train(was)


# --------------------------------------------------------------------------------------------------
# DPO and reward-model likelihoods


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses ``[B]`` and the implicit rewards of the chosen and rejected replies ``[B]``.

    With ``h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`` (summed log-probs of
    each reply): ``sigmoid`` is DPO's ``−log σ(β h)`` (Rafailov et al. 2023, eq. 7), ``ln 2`` when the
    policy equals the reference; ``ipo`` is IPO's ``(h − 1/(2β))²`` (Azar et al. 2023, eq. 17, on
    summed rather than length-averaged log-probs). The implicit reward is ``β (log π − log π_ref)``.

    Raises:
        ValueError: an unknown ``loss_type`` or ``beta <= 0``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: sigmoid, ipo")
    return losses, beta * chosen.detach(), beta * rejected.detach()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``−log σ(r_w − r_l)`` per pair ``[B]``: the negative Bradley–Terry log-likelihood of the preference."""
    return -F.logsigmoid(chosen - rejected)


def plackett_luce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Negative Plackett–Luce log-likelihood ``[B]`` of rankings; ``scores`` ``[B, K]`` are ordered best first.

    ``−Σ_k (s_k − log Σ_{j≥k} exp s_j)``; for ``K = 2`` this is ``bradley_terry_loss``.
    """
    tail_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # [B, K]: log Σ_{j≥k} exp s_j
    return -(scores - tail_lse)[:, :-1].sum(dim=-1)


class RewardModel(nn.Module):
    """A checkpoint trunk (decoder or encoder) with a ``ScalarHead``: one reward per sequence ``[B]``.

    The head reads the last real token (``pooling="last"``: for a decoder the only position that has
    read the whole conversation) or ``cls``/``mean`` for an encoder.
    """

    def __init__(self, trunk: nn.Module, pooling: str = "last"):
        super().__init__()
        self.trunk = trunk
        self.config = trunk.config
        self.head = ScalarHead(trunk.config, pooling)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` of right-padded sequences ``idx`` ``[B, T]`` (``attention_mask`` True = real)."""
        from lmforge.model.heads import hidden_states

        return self.head(hidden_states(self.trunk, idx, attention_mask), attention_mask)


def save_reward_model(
    dir: Path, rm: RewardModel, mcfg: Any, *, tokenizer_path: Path, base: str, max_len: int = 0
) -> None:
    """A normal checkpoint of the trunk plus ``heads.safetensors`` (the scalar head) and ``finetune.json``
    (``max_len``: the tokens per conversation it was trained on, which ``training.judge`` scores with;
    0 = the model's ``block_size``)."""
    from lmforge.training.finetune import save_finetuned

    meta = {"method": "reward", "pooling": rm.head.pooling, "base": base, "max_len": max_len}
    heads = nn.ModuleDict({REWARD_HEAD: rm.head})
    save_finetuned(dir, rm.trunk, mcfg, tokenizer_path=tokenizer_path, heads=heads, meta=meta)


def load_reward_model(path: Path, which: str = "best") -> RewardModel:
    """The ``RewardModel`` saved by ``align.reward`` (a checkpoint or the stage directory), in eval mode.

    Raises:
        InputError: the checkpoint holds no reward head.
    """
    import json

    from safetensors.torch import load_file

    from lmforge.errors import InputError
    from lmforge.model import checkpoint as ckpt
    from lmforge.model.checkpoint import HEADS_FILE, META_FILE

    dir = ckpt.resolve_checkpoint(Path(path), which)
    meta_path = dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("method") != "reward" or not (dir / HEADS_FILE).is_file():
        raise InputError(f"{dir} is not a reward model (no {HEADS_FILE} with method 'reward')")
    trunk, _ = ckpt.load_model(dir)
    rm = RewardModel(trunk, meta["pooling"])
    state = load_file(str(dir / HEADS_FILE))
    rm.head.load_state_dict({k.removeprefix(f"{REWARD_HEAD}."): v for k, v in state.items()})
    return rm.eval()


# --------------------------------------------------------------------------------------------------
# GRPO


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, *, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantages ``[P, G]``: ``(r − mean_g r) / (std_g r + eps)``.

    ``std`` is the population standard deviation over each group; a group whose rewards are all equal
    gets zero advantages (it carries no signal). ``scale=False`` is Dr. GRPO (Liu et al. 2025, TRL's
    ``scale_rewards=False``): ``r − mean_g r`` only, so a group that is nearly all right or all wrong
    (small std) is not up-weighted over a group split half and half.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """PPO's clipped surrogate, negated, per token ``[B, T]`` (Schulman et al. 2017, eq. 7).

    ``−min(ρ A, clip(ρ, 1−ε, 1+ε) A)`` with ``ρ = exp(logp − old_logp)``; ``advantages`` ``[B]`` (one
    per sequence, GRPO) or ``[B, T]`` (per token, PPO with GAE).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


@dataclass
class Rollout:
    """One GRPO batch: ``P`` prompts × ``G`` sampled completions as ``lm_batch`` rows (``B = P·G``).

    ``m`` marks the completion tokens (the ``<|end|>`` a row stopped on included); ``old_logp`` and
    ``ref_logp`` ``[B, T]`` are the sampling policy's and the reference's log-probabilities of ``y``.
    """

    x: torch.Tensor  # [B, T]
    y: torch.Tensor  # [B, T]
    m: torch.Tensor  # [B, T] bool
    advantages: torch.Tensor  # [B]
    rewards: torch.Tensor  # [P, G]
    old_logp: torch.Tensor  # [B, T]
    ref_logp: torch.Tensor | None  # [B, T], None without a KL term
    completions: list[Any] = field(repr=False)  # [B] inference.engine.Completion


def rollout(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    reward: Callable[[int, Any], float],
    *,
    group_size: int,
    params: Any,
    pad_id: int,
    reference: Reference | None = None,
    scale_rewards: bool = True,
) -> Rollout:
    """Sample ``group_size`` completions per prompt with ``engine`` and score them (GRPO, Shao et al. 2024).

    ``reward(p, completion)`` scores a ``Completion`` of prompt ``p``. Completions that ended on a stop
    token get that token back (it is part of what the policy chose) when ``params.stop_ids`` holds
    exactly one id and no stop strings are set. ``params`` is the engine's
    ``SamplingParams``; row ``p·G + g`` is sample ``g`` of prompt ``p``. ``scale_rewards``: see
    ``group_advantages``'s ``scale``.
    """
    from lmforge.training.batches import lm_batch

    model = engine.model
    rows = [list(p) for p in prompts for _ in range(group_size)]
    completions = engine.generate(rows, params)
    stop = sorted(params.stop_ids)
    examples, scores = [], []
    for i, (prompt, c) in enumerate(zip(rows, completions)):
        ended = c.finish_reason == "stop" and len(stop) == 1 and not params.stop  # on the stop token
        ids = c.ids + stop if ended else c.ids
        prompt = prompt[-(engine.block_size - 1) :]
        limit = engine.block_size + 1
        examples.append(((prompt + ids)[:limit], ([False] * len(prompt) + [True] * len(ids))[:limit]))
        scores.append(float(reward(i // group_size, c)))
    device = next(model.parameters()).device
    x, y, m = (t.to(device) for t in lm_batch(examples, pad_id))
    rewards = torch.tensor(scores, device=device).view(len(prompts), group_size)
    with torch.no_grad():
        old = token_logprobs(model, x, y)
    ref = reference.token_logprobs(x, y) if reference is not None else None
    adv = group_advantages(rewards, scale=scale_rewards).reshape(-1)
    return Rollout(x, y, m, adv, rewards, old, ref, completions)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``[P]`` bool: the groups of ``rewards [P, G]`` whose rewards are not all equal — the only ones
    with a non-zero advantage (DAPO's dynamic-sampling filter, Yu et al. 2025)."""
    return rewards.amax(dim=1) > rewards.amin(dim=1)


def keep_groups(rollouts: Sequence[Rollout], group_size: int, limit: int) -> Rollout | None:
    """DAPO's dynamic sampling (Yu et al. 2025): the first ``limit`` informative groups
    (``informative_groups``) of ``rollouts`` as one rollout, right-padded to its longest row; ``None``
    when no group has signal. Advantages stay as each group computed them; since the step divides by
    its completion tokens, dropping zero-advantage groups makes every token of the step carry signal."""
    parts: list[tuple[Rollout, torch.Tensor]] = []
    left = limit
    for ro in rollouts:
        groups = informative_groups(ro.rewards).nonzero().flatten()[:left]
        if len(groups):
            parts.append((ro, groups))
            left -= len(groups)
    if not parts:
        return None
    T = max(ro.x.shape[1] for ro, _ in parts)

    def rows(ro: Rollout, groups: torch.Tensor) -> torch.Tensor:
        return (groups[:, None] * group_size + torch.arange(group_size)).flatten()

    def cat(name: str, pad: Any) -> torch.Tensor:
        out = []
        for ro, groups in parts:
            t = getattr(ro, name)[rows(ro, groups)]
            out.append(F.pad(t, (0, T - t.shape[1]), value=pad))
        return torch.cat(out)

    ref = cat("ref_logp", 0.0) if parts[0][0].ref_logp is not None else None
    return Rollout(
        cat("x", 0),
        cat("y", 0),
        cat("m", False),
        torch.cat([ro.advantages[rows(ro, g)] for ro, g in parts]),
        torch.cat([ro.rewards[g] for ro, g in parts]),
        cat("old_logp", 0.0),
        ref,
        [ro.completions[i] for ro, g in parts for i in rows(ro, g).tolist()],
    )


def grpo_loss_sum(
    model: nn.Module, ro: Rollout, *, clip_eps: float, beta: float
) -> tuple[torch.Tensor, float]:
    """``(summed per-token GRPO loss over the completion tokens, mean per-token KL to the reference)``.

    Per token: the clipped surrogate with the sequence's group advantage, plus ``beta`` × ``kl_k3``
    (GRPO eq. 3). Departure from the paper: tokens are summed here and divided by the step's total count
    of completion tokens (``training.step``'s token weighting, as DAPO and Dr. GRPO do) instead of
    averaging each sequence first, so long and short completions weigh by their tokens.
    """
    logp = token_logprobs(model, ro.x, ro.y)  # [B, T]
    loss = clipped_policy_loss(logp, ro.old_logp, ro.advantages, clip_eps)
    kl = torch.zeros((), device=logp.device)
    n = ro.m.sum().clamp(min=1)
    if ro.ref_logp is not None:
        per_token = kl_k3(logp, ro.ref_logp)
        kl = (per_token.detach() * ro.m).sum() / n
        if beta > 0:
            loss = loss + beta * per_token
    return (loss * ro.m).sum(), float(kl)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate ``exp(r) − r − 1`` with ``r = ref_logp − logp`` (Schulman's "k3";
    GRPO eq. 4): unbiased on samples from π, never negative."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


# --------------------------------------------------------------------------------------------------
# verifiable rewards and a task generator

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


# --------------------------------------------------------------------------------------------------
# preference data → token rows

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


def read_preference_split(paths: Sequence[Path], problems: list) -> list[Any]:
    """Every ``Preference`` of ``paths`` (``data.preferences.read_preferences``), in file order."""
    from lmforge.data.preferences import read_preferences

    return [p for path in paths for p in read_preferences(path, problems)]


def read_ranking_split(paths: Sequence[Path], problems: list) -> list[Any]:
    """Every ``Ranking`` of ``paths`` (``data.preferences.read_rankings``; a pair is a ranking of 2)."""
    from lmforge.data.preferences import read_rankings

    return [r for path in paths for r in read_rankings(path, problems)]


def three_sets(
    read: Callable[[Sequence[Path], list], list[Any]], inputs: Mapping[str, Path], cfg: Any
) -> tuple[list[Any], list[Any], list[Any], list]:
    """``(train, select, held_out, problems)`` of a preference stage's inputs: ``read`` (``read_preference_split``
    or ``read_ranking_split``) over the ``train*`` inputs; the held-out records are the ``val`` input or
    else ``cfg.val_fraction`` (0.1 when 0) of them; the selection records, which choose the best step,
    are as much again carved from the rest (seed ``cfg.seed + 1``): the held-out records are scored once,
    at the end, by weights they did not choose. ``problems`` lists the bad records read."""
    from lmforge.data.supervised import holdout

    problems: list = []
    train = read([p for k, p in sorted(inputs.items()) if k.startswith("train")], problems)
    if "val" in inputs:
        held = read([inputs["val"]], problems)
    else:
        train, held = holdout(train, cfg.val_fraction or 0.1, cfg.seed)
    train, select = holdout(train, cfg.val_fraction or 0.1, cfg.seed + 1)
    return train, select, held, problems
