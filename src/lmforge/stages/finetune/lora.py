"""Supervised fine-tuning with LoRA adapters (stage kind ``finetune.lora``).

The SFT of ``finetune.sft`` with the base weights frozen and low-rank adapters (Hu et al. 2021) on
the linear layers named in ``targets`` (default: every attention and MLP projection). Each checkpoint
holds ``adapter/`` (``adapter_model.safetensors`` + ``adapter_config.json``, the PEFT layout) and, with
``merge`` on, the merged weights as a normal checkpoint for eval, generate and chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.config import ConfigError, above, at_least, opt
from lmforge.model.config import LORA_TARGETS
from lmforge.runstore import StageContext, run_config
from lmforge.training.options import ConversationOptions

if TYPE_CHECKING:  # torch stays unimported until the stage runs (fast --help)
    from lmforge.model.lora import LoraConfig

STAGE = "finetune.lora"
VERSION = 1


@dataclass
class Config(ConversationOptions):
    """Options of ``lmforge finetune lora``."""

    lr: float = opt(5e-3, "peak learning rate (adapters take larger steps than full fine-tuning)")
    weight_decay: float = opt(0.0, "decoupled weight decay (L2) on the adapter matrices")
    r: int = opt(8, "adapter rank")
    alpha: float = opt(16.0, "adapter scale numerator: the update is (alpha / r) · B A")
    lora_dropout: float = opt(0.0, "dropout on the adapter's input")
    targets: list[str] = opt(list(LORA_TARGETS), "names of the linear layers that get adapters")
    merge: bool = opt(True, "also save the merged weights as a normal checkpoint")

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "r")
        above(self, 0, "alpha")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not self.targets:
            raise ConfigError("targets", "name at least one linear layer (e.g. [q_proj, v_proj])")


INPUTS = ("model", "train", "val")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Fine-tune adapters (or return the cached result); returns the stage manifest."""
    check_targets(cfg)
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def check_targets(cfg: Config) -> None:
    """Refuse a base that is not a decoder, or ``targets`` that match no linear layer of it (or match a
    tied one), before the stage starts: the base's model is built from its config on the meta device (no
    memory, no weights read) and the adapters applied to it. A base not found yet is left for the run
    store to report.

    Raises:
        ConfigError: key ``model`` or ``targets``; the latter lists the base's linear layers.
    """
    import torch  # not at --help time

    from lmforge.model.decoder import Decoder
    from lmforge.model.lora import apply_lora
    from lmforge.training.finetune import base_config

    found = base_config(cfg.model, cfg.out, cfg.checkpoint)
    if found is None:
        return
    ckpt_dir, mcfg = found
    if mcfg.arch != "decoder":
        raise ConfigError("model", f"LoRA SFT needs a decoder checkpoint, {ckpt_dir} is an {mcfg.arch}")
    with torch.device("meta"):
        try:
            apply_lora(Decoder(mcfg), lora_config(cfg))
        except ValueError as exc:
            raise ConfigError("targets", f"{exc} (base {ckpt_dir})") from exc


def lora_config(cfg: Config) -> LoraConfig:
    """The adapters ``cfg`` asks for."""
    from lmforge.model.lora import LoraConfig  # imports torch: not at --help time

    return LoraConfig(r=cfg.r, alpha=cfg.alpha, dropout=cfg.lora_dropout, targets=tuple(cfg.targets))


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """The SFT loop (``sft_loop.run_sft``) with adapters."""
    from lmforge.stages.finetune.sft_loop import run_sft  # imports torch: not at --help time

    return run_sft(cfg, ctx, lora=lora_config(cfg))
