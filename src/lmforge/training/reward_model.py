"""The reward model: a checkpoint trunk with a scalar head, and its checkpoint (stage ``align.reward``).

``RewardModel`` puts ``model.heads.ScalarHead`` on the last real token of a decoder (or an encoder's
``cls``/``mean`` pooling); ``save_reward_model`` / ``load_reward_model`` write and read it as a normal
checkpoint plus ``heads.safetensors`` and ``finetune.json``. ``training.judge`` scores reply texts with
it and measures win rates.

Shape notation: B batch (rows), T tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.model.heads import ScalarHead

REWARD_HEAD = "reward"


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
