"""Output heads on top of a transformer's hidden states, and the BERT pre-training model that uses two.

- ``MLMHead``: BERT's masked-language-model head (Devlin et al. 2019): ``dense`` (D→D) → GELU → the
  configured norm → ``decoder`` (D→V) whose weight is the token embedding matrix [tie_embeddings=True],
  plus a per-token output ``bias``, as in BERT.
- ``ClassificationHead``: ``pool`` the sequence ("cls" | "mean" | "last", padding-aware) → ``dense``
  (D→D) → tanh → dropout → ``out_proj`` (D→n_classes). With "cls" this is BERT's pooler + classifier;
  the same shape is RoBERTa's classification head (Liu et al. 2019) for every pooling.
- ``NSPHead``: BERT's next-sentence-prediction head, a two-class ``ClassificationHead`` on [CLS].
- ``TokenClassificationHead``: one label per token (NER, tagging): dropout → ``out_proj`` (D→C) at every
  position, BERT's token-classification head (Devlin et al. 2019, §4.3).
- ``SpanHead``: extractive question answering, BERT's SQuAD head (Devlin et al. 2019, §4.2): one linear
  layer ``proj`` (D→2) giving a start and an end logit per token (``training/qa_spans.py`` builds the
  windows, the loss and the span search).
- ``ScalarHead``: one number per sequence ("last" | "mean" | "cls" pooling; reward models, Ouyang et al.
  2022) or per token ("none"; value heads for PPO): a single linear layer ``proj`` (D→1).
- ``EncoderForPretraining``: ``Encoder`` + ``MLMHead`` (+ ``NSPHead``), the BERT pre-training model.
- ``hidden_states`` (what every head reads, from a decoder or an encoder checkpoint model), ``pool`` and
  ``embed_batch`` (unit-length sentence embeddings: the contrastive fine-tune trains them, the API
  server's embeddings endpoint serves them).

Every head takes hidden states ``[B, T, D]`` and, where it pools, the ``attention_mask`` ``[B, T]``
(True = real token) so padding never leaks into the result. Each head states its init in
``init_weights`` (called by its constructor): dense/projection weights normal std 0.02, biases zeros,
norms gain one.

Shape notation: B batch, T tokens, D n_embd, V vocab_size, C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import INIT_STD, count_params, make_norm
from lmforge.model.encoder import Encoder

POOLING_CHOICES = ("cls", "mean", "last")


def hidden_states(
    model: nn.Module,
    idx: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states ``[B, T, D]`` (after the final norm) of a decoder or encoder checkpoint model.

    A decoder is causal, so with right padding the real tokens never see the pads and the mask is not
    needed; an encoder gets ``attention_mask`` so padding is ignored, and ``token_type_ids`` ``[B, T]``
    (segments of a text pair, e.g. question 0 / passage 1) when given.

    Raises:
        ValueError: ``token_type_ids`` given for a decoder, which has no segments.
    """
    if hasattr(model, "encoder"):  # EncoderForPretraining
        return model.encoder(idx, attention_mask, token_type_ids)
    if getattr(model.config, "arch", "decoder") == "encoder":
        return model(idx, attention_mask, token_type_ids)
    if token_type_ids is not None:
        raise ValueError("token_type_ids given for a decoder, which has no segment embeddings")
    return model.hidden_states(idx)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool hidden states ``[B, T, D]`` to ``[B, D]``, ignoring positions where ``attention_mask`` is False.

    ``cls``: position 0 (the [CLS] token). ``mean``: mean over real tokens. ``last``: the last real token
    of each row (right or left padding alike). A None mask means every position is real.

    Raises:
        ValueError: ``how`` is not one of ``POOLING_CHOICES``, or the mask does not match ``hidden``.
    """
    if how not in POOLING_CHOICES:
        raise ValueError(f"unknown pooling {how!r}; valid: {', '.join(POOLING_CHOICES)}")
    B, T, _ = hidden.shape
    if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.shape != (B, T)):
        raise ValueError(
            f"attention_mask must be a bool tensor [B, T] = {(B, T)}, "
            f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )
    if how == "cls":
        return hidden[:, 0]  # [B, D]
    if attention_mask is None:
        return hidden.mean(dim=1) if how == "mean" else hidden[:, -1]  # [B, D]
    if how == "mean":
        weights = attention_mask.to(hidden.dtype)[:, :, None]  # [B, T, 1]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, D]
    positions = torch.arange(T, device=hidden.device)
    last = torch.where(attention_mask, positions, -1).amax(dim=1).clamp(min=0)  # [B]
    return hidden[torch.arange(B, device=hidden.device), last]  # [B, D]


def embed_batch(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Normalised embeddings ``[B, D]`` of a padded batch (keeps the graph: used in training)."""
    return F.normalize(pool(hidden_states(model, idx, mask), mask, pooling).float(), dim=-1)


def init_linear(linear: nn.Linear) -> None:
    """The init of every head's dense and projection layers (BERT's): weight normal std ``INIT_STD``
    (0.02), bias (when it has one) zeros."""
    nn.init.normal_(linear.weight, mean=0.0, std=INIT_STD)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _check_classes(n_classes: int) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}")


class MLMHead(nn.Module):
    """BERT's masked-LM head: hidden ``[B, T, D]`` → logits ``[B, T, V]``.

    Args:
        cfg: the model configuration (width, vocabulary, norm, bias, tying).
        tok_emb: the token embedding; its weight becomes ``decoder.weight`` when ``cfg.tie_embeddings``.
    """

    def __init__(self, cfg: ModelConfig, tok_emb: nn.Embedding):
        super().__init__()
        if tok_emb.weight.shape != (cfg.vocab_size, cfg.n_embd):
            raise ValueError(
                f"tok_emb must be [vocab_size, n_embd] = {(cfg.vocab_size, cfg.n_embd)}, "
                f"got {tuple(tok_emb.weight.shape)}"
            )
        self.tied = cfg.tie_embeddings
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.norm = make_norm(cfg, cfg.n_embd)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if self.tied:
            self.decoder.weight = tok_emb.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """``dense`` weight normal std 0.02, bias zeros; ``norm`` reset; ``bias`` zeros; an untied
        ``decoder`` weight normal std 0.02 (a tied one belongs to, and is initialised with, the embedding).
        """
        init_linear(self.dense)
        self.norm.reset_parameters()
        nn.init.zeros_(self.bias)
        if not self.tied:
            init_linear(self.decoder)  # no bias: the head's own per-token ``bias`` is added after it

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map hidden states ``[B, T, D]`` to vocabulary logits ``[B, T, V]``."""
        h = self.norm(F.gelu(self.dense(hidden)))  # [B, T, D]
        return self.decoder(h) + self.bias  # [B, T, V]


class ClassificationHead(nn.Module):
    """Sequence classifier: hidden ``[B, T, D]`` (+ mask) → logits ``[B, C]``.

    Args:
        cfg: the model configuration (width, bias, dropout).
        n_classes: number of classes C (>= 1).
        pooling: "cls" | "mean" | "last" (see ``pool``).

    Raises:
        ValueError: ``n_classes`` < 1 or an unknown ``pooling``.
    """

    def __init__(self, cfg: ModelConfig, n_classes: int, pooling: str = "cls"):
        super().__init__()
        _check_classes(n_classes)
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLING_CHOICES)}")
        self.pooling = pooling
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out_proj = nn.Linear(cfg.n_embd, n_classes, bias=True)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """``dense`` and ``out_proj`` weights normal std 0.02, their biases zeros."""
        init_linear(self.dense)
        init_linear(self.out_proj)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, C]`` from hidden states ``[B, T, D]`` and an optional bool mask ``[B, T]``."""
        pooled = torch.tanh(self.dense(pool(hidden, attention_mask, self.pooling)))  # [B, D]
        return self.out_proj(self.drop(pooled))  # [B, C]


class NSPHead(ClassificationHead):
    """BERT's next-sentence head: [CLS] → dense → tanh → 2 logits (0 = B follows A, 1 = B is random)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, n_classes=2, pooling="cls")


class TokenClassificationHead(nn.Module):
    """Per-token classifier: hidden ``[B, T, D]`` → logits ``[B, T, C]`` (no pooling; padded positions
    get logits too, which the loss and the reader of predictions skip).

    Args:
        cfg: the model configuration (width, dropout).
        n_classes: number of labels C (>= 1).

    Raises:
        ValueError: ``n_classes`` < 1.
    """

    def __init__(self, cfg: ModelConfig, n_classes: int):
        super().__init__()
        _check_classes(n_classes)
        self.drop = nn.Dropout(cfg.dropout)
        self.out_proj = nn.Linear(cfg.n_embd, n_classes, bias=True)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """``out_proj`` weight normal std 0.02, bias zeros."""
        init_linear(self.out_proj)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Label logits ``[B, T, C]`` from hidden states ``[B, T, D]``."""
        return self.out_proj(self.drop(hidden))  # [B, T, C]


class ProjectionHead(nn.Module):
    """A head that is one linear layer ``proj`` (D→``width``, with a bias): the span and scalar heads.

    Args:
        cfg: the model configuration (width).
        width: outputs per position.
    """

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        self.proj = nn.Linear(cfg.n_embd, width, bias=True)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """``proj`` weight normal std 0.02, bias zeros (so a scalar head starts near 0)."""
        init_linear(self.proj)


class SpanHead(ProjectionHead):
    """Answer-span scorer: hidden ``[B, T, D]`` → ``(start_logits [B, T], end_logits [B, T])``.

    BERT's SQuAD head: a start vector S and an end vector E (the two rows of ``proj``), the logit of
    token i starting (ending) the answer is ``S·h_i`` (``E·h_i``), plus a bias; no dropout, no pooling.
    Every position gets logits (question, [CLS] and padding too); which positions may start or end an
    answer is the caller's to decide (``training.qa_spans``).

    Args:
        cfg: the model configuration (width).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, 2)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits, each ``[B, T]``, from hidden states ``[B, T, D]``."""
        start, end = self.proj(hidden).unbind(dim=-1)  # [B, T, 2] → 2 × [B, T]
        return start, end


class ScalarHead(ProjectionHead):
    """One scalar per sequence (``pooling`` "last" | "mean" | "cls": ``[B]``) or per token ("none": ``[B, T]``).

    Raises:
        ValueError: an unknown ``pooling``.
    """

    def __init__(self, cfg: ModelConfig, pooling: str = "last"):
        if pooling not in (*POOLING_CHOICES, "none"):
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLING_CHOICES)}, none")
        super().__init__(cfg, 1)
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalars ``[B]`` (pooled) or ``[B, T]`` (pooling "none") from hidden states ``[B, T, D]``."""
        if self.pooling == "none":
            return self.proj(hidden).squeeze(-1)  # [B, T]
        return self.proj(pool(hidden, attention_mask, self.pooling)).squeeze(-1)  # [B]


class EncoderForPretraining(nn.Module):
    """BERT pre-training model: ``Encoder`` → ``MLMHead`` (and ``NSPHead`` when ``nsp``).

    Args:
        cfg: the model configuration.
        nsp: add the next-sentence head (BERT); False gives MLM only (RoBERTa, Liu et al. 2019).
        n_segments: token types of the encoder (see ``Encoder``).
    """

    def __init__(self, cfg: ModelConfig, nsp: bool = True, n_segments: int = 2):
        super().__init__()
        self.encoder = Encoder(cfg, n_segments=n_segments)
        self.config = self.encoder.config
        self.mlm_head = MLMHead(cfg, self.encoder.tok_emb)
        self.nsp_head = NSPHead(cfg) if nsp else None

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise the encoder (``Encoder.init_weights``) and then each head (its ``init_weights``)."""
        self.encoder.init_weights()
        self.mlm_head.init_weights()
        if self.nsp_head is not None:
            self.nsp_head.init_weights()

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mlm_logits [B, T, V], nsp_logits [B, 2] or None)``; arguments as ``Encoder.forward``."""
        hidden = self.encoder(idx, attention_mask, token_type_ids)  # [B, T, D]
        mlm_logits = self.mlm_head(hidden)  # [B, T, V]
        nsp_logits = self.nsp_head(hidden, attention_mask) if self.nsp_head is not None else None  # [B, 2]
        return mlm_logits, nsp_logits

    def num_params(self, non_embedding: bool = True) -> int:
        """Distinct parameters, heads included; see ``count_params`` for what ``non_embedding`` leaves out."""
        return count_params(self, non_embedding=non_embedding)
