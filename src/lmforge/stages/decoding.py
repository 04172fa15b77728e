"""The decoding options ``lmforge generate`` and ``lmforge chat`` share — the model, sampling, int8
weights and speculative drafts — declared, documented and validated once (no torch import, so
``--help`` stays fast). Each command's ``Config`` subclasses ``DecodingOptions``, changes a default
with ``config.retuned`` where its use differs (chat replies are longer and penalise repetition), and adds its
own fields (prompts, stop strings, the system prompt, the seed's meaning). ``sampling_params`` turns
the sampling options into the engine's ``SamplingParams`` (0 and 1 meaning "off"), once for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lmforge.config import ConfigError, above, at_least, opt
from lmforge.training.options import device_option

if TYPE_CHECKING:  # torch stays unimported until decoding starts (fast --help)
    from lmforge.inference.rows import SamplingParams


@dataclass
class DecodingOptions:
    """Options shared by every command that decodes text from a checkpoint."""

    model: str = opt("@pretrain", "a checkpoint directory, or a training stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    max_new_tokens: int = opt(64, "tokens to generate per prompt (or reply)")
    temperature: float = opt(0.8, "sampling temperature (0 = greedy)")
    top_k: int = opt(50, "sample among the k most likely tokens (0 = all)")
    top_p: float = opt(1.0, "nucleus sampling: smallest set with this much probability (1 = off)")
    min_p: float = opt(0.0, "drop tokens less likely than min_p times the top token (0 = off)")
    repetition_penalty: float = opt(
        1.0, "penalise tokens already in the text (CTRL; 1 = off); != 1 decodes plainly, without a draft"
    )
    device: str = device_option()
    weights: Literal["exact", "int8"] = opt(
        "exact", "exact, or int8: weight-only int8 matmuls, ~2x faster decoding on a CPU, not bit-exact"
    )
    draft: Literal["none", "ngram", "model"] = opt(
        "none",
        "speculative decoding, verified in one pass, output unchanged (docs/eval.md): ngram drafts from"
        " earlier text of each row (prompt lookup; fast on repetitive text), model drafts with"
        " --draft_model; not used when repetition_penalty != 1 (plain decoding then)",
    )
    draft_model: str = opt(
        "",
        "with --draft model: the draft, a checkpoint directory or a training stage directory (its"
        " --checkpoint entry), a smaller model with the target's tokenizer",
        path=True,
    )
    draft_tokens: int = opt(4, "speculative decoding: tokens drafted per row and pass at most")

    def validate(self) -> None:
        from lmforge.inference.speculative import check_draft_options

        check_draft_options(self.draft, self.draft_model, self.draft_tokens)
        at_least(self, 1, "max_new_tokens")
        at_least(self, 0, "temperature", "top_k")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ConfigError("min_p", f"must be in [0, 1], got {self.min_p}")
        above(self, 0, "repetition_penalty")

    def sampling_params(self, **extra: Any) -> SamplingParams:
        """The engine's ``SamplingParams`` of these options (``top_k`` 0, ``top_p`` 1 and ``min_p`` 0 are
        off: ``None``), plus ``extra`` (the seed, stop strings and ids)."""
        from lmforge.inference.rows import SamplingParams

        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k or None,
            top_p=self.top_p if self.top_p < 1 else None,
            min_p=self.min_p or None,
            repetition_penalty=self.repetition_penalty,
            **extra,
        )
