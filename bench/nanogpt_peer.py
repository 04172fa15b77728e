"""A compact port of nanoGPT's model.py and train.py, the peer of `bench/heldout_text.py`.

nanoGPT (Karpathy, https://github.com/karpathy/nanoGPT) is not installable, so this file re-implements
what its README's CPU recipe runs:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

What it keeps, each as nanoGPT has it: character-level data (the vocabulary is every character of the
whole text, as `data/shakespeare_char/prepare.py` builds it; first 90% train, last 10% val); the GPT-2
style model of `model.py` (learned token and position embeddings, pre-LayerNorm blocks of causal
self-attention with one fused q/k/v projection and a 4x GELU MLP, a final LayerNorm, the output head tied
to the token table; no biases, as `train.py` sets `bias = False`; weights N(0, 0.02), the residual
projections `c_proj` N(0, 0.02 / sqrt(2 n_layer))); `train.py`'s loop (random windows drawn with
`torch.randint`, AdamW with betas (0.9, 0.99) from `train_shakespeare_char.py`, weight decay 0.1 on
every tensor of two or more dimensions, lr 1e-3 with a linear warmup of 100 iterations and a cosine
decay to 1e-4 at `lr_decay_iters`, gradient clipping at 1.0, fp32 on a CPU, torch's default thread
count, seed 1337). What it leaves out: the periodic `estimate_loss` (it does not change training; left
out, the peer trains for the whole budget), checkpoints, logging and GPU paths. It stops at
`max_iters` or when the wall-clock budget of training is spent, whichever comes first; the held-out
score is then computed once, outside the budget (`score`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():  # the residual projections, per the GPT-2 paper
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of predicting ``targets`` from ``idx`` (both ``[B, T]``)."""
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(
    it: int, lr: float = 1e-3, warmup: int = 100, decay_iters: int = 2000, min_lr: float = 1e-4
) -> float:
    """train.py's schedule: linear warmup, cosine decay to ``min_lr`` at ``decay_iters``, then constant."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train(
    train_ids: torch.Tensor,
    vocab_size: int,
    budget_s: float,
    *,
    max_iters: int = 2000,
    batch_size: int = 12,
    block_size: int = 64,
    seed: int = 1337,
) -> tuple[GPT, dict[str, float]]:
    """Train the README recipe's model on ``train_ids`` (a 1-D tensor of character ids) for at most
    ``max_iters`` iterations or ``budget_s`` seconds of training; returns the model and its stats."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train_ids) - block_size, (batch_size,))
        x = torch.stack([train_ids[i : i + block_size] for i in ix])
        y = torch.stack([train_ids[i + 1 : i + 1 + block_size] for i in ix])
        return x, y

    x, y = get_batch()
    start, it, loss = time.perf_counter(), 0, torch.tensor(math.nan)
    while it <= max_iters and time.perf_counter() - start < budget_s:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, decay_iters=max_iters)
        loss = model(x, y)
        x, y = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
    seconds = time.perf_counter() - start
    return model, {
        "iters": it,
        "train_s": seconds,
        "train_loss": float(loss.detach()),
        "chars_per_s": it * batch_size * block_size / seconds,
    }


@torch.no_grad()
def score(model: GPT, val_ids: torch.Tensor, char_bytes: torch.Tensor, block_size: int = 64) -> float:
    """Bits per byte of ``model`` on ``val_ids`` in disjoint windows of ``block_size`` characters (each
    character after the first predicted once); ``char_bytes[id]`` is a character's UTF-8 length."""
    model.eval()
    n = (len(val_ids) - 1) // block_size
    xs = val_ids[: n * block_size].view(n, block_size)
    ys = val_ids[1 : n * block_size + 1].view(n, block_size)
    pairs = [(xs[i : i + 64], ys[i : i + 64]) for i in range(0, n, 64)]
    if len(val_ids) - 1 > n * block_size:  # the last, shorter window
        pairs.append((val_ids[n * block_size : -1][None], val_ids[n * block_size + 1 :][None]))
    nats = sum(float(model(x, y)) * y.numel() for x, y in pairs)
    return nats / math.log(2) / int(char_bytes[val_ids[1:]].sum())
