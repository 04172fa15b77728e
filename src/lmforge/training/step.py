"""The one token-weighted loss and gradient-accumulation rule shared by every training loop.

Normalisation rule: the loss of an optimiser step is the sum of token cross-entropies over every
supervised token of the whole accumulated batch, divided by that batch's supervised-token count. So each
micro-batch backpropagates ``loss_sum / total_tokens`` where ``total_tokens`` is counted over *all*
micro-batches before the first backward. Any split into micro-batches × accumulation steps then gives the
same gradient, however ragged the masks (averaging per-micro-batch means would over-weight micro-batches
with few supervised tokens; torchtune #2307 is that bug). The pattern, written once in
``accumulate_gradients``::

    total = sum(supervised_tokens(y, m) for _, y, m in micro_batches)
    for x, y, m in micro_batches:
        loss_sum, _ = token_loss(model(x), y, m)
        weighted_backward(loss_sum, total)

Across data-parallel ranks ``total`` would be all-reduced first; that is a later extension.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (idx, targets, mask)


def _supervised(targets: torch.Tensor, mask: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Targets ``[B, T]`` with every unsupervised position (mask False) set to ``ignore_index``."""
    if mask is None:
        return targets
    if mask.dtype != torch.bool or mask.shape != targets.shape:
        raise ValueError(
            f"mask must be a bool tensor shaped like targets {tuple(targets.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return targets.masked_fill(~mask, ignore_index)


def supervised_tokens(
    targets: torch.Tensor, mask: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> int:
    """Number of positions of ``targets`` ``[B, T]`` that carry a loss (mask True, not ``ignore_index``)."""
    return int((_supervised(targets, mask, ignore_index) != ignore_index).sum())


def token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy, computed in fp32, and the number of tokens it covers.

    Args:
        logits: ``[B, T, V]`` scores (any float dtype).
        targets: ``[B, T]`` token ids; ``ignore_index`` marks positions without a loss.
        mask: optional ``[B, T]`` bool, True where the position is supervised (e.g. assistant tokens).

    Returns:
        ``(loss_sum, n_tokens)``: a scalar tensor (0 when nothing is supervised) and an int.

    Raises:
        ValueError: shapes that do not line up, or a mask that is not bool.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    targets = _supervised(targets, mask, ignore_index)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # [B*T, V]
        targets.reshape(-1),  # [B*T]
        ignore_index=ignore_index,
        reduction="sum",
    )
    return loss_sum, int((targets != ignore_index).sum())


def weighted_backward(loss_sum: torch.Tensor, total_tokens: int) -> None:
    """Backpropagate one micro-batch's ``loss_sum`` divided by the accumulated batch's token count.

    ``total_tokens`` of 0 (nothing supervised anywhere) backpropagates the zero loss unscaled.
    """
    (loss_sum / max(total_tokens, 1)).backward()


def accumulate_gradients(model: nn.Module, micro_batches: Iterable[MicroBatch]) -> tuple[float, int]:
    """Run forward and backward over ``(idx, targets, mask | None)`` micro-batches, accumulating grads.

    ``model(idx)`` must return logits ``[B, T, V]``. Gradients add onto whatever ``.grad`` holds (call
    ``optimizer.zero_grad`` before). Returns ``(mean loss per supervised token, supervised tokens)``.
    """
    micro_batches = list(micro_batches)
    total = sum(supervised_tokens(targets, mask) for _, targets, mask in micro_batches)
    sums = []
    for idx, targets, mask in micro_batches:
        loss_sum, _ = token_loss(model(idx), targets, mask)
        weighted_backward(loss_sum, total)
        sums.append(loss_sum.detach())
    loss = torch.stack(sums).sum().item() / max(total, 1) if sums else 0.0  # one device sync
    return loss, total
