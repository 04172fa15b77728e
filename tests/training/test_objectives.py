"""Tests for lmforge.training.objectives: BERT masking statistics, NSP pairs, the losses, and learning."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.heads import EncoderForPretraining
from lmforge.training.objectives import make_nsp_pairs, mask_tokens, mlm_loss, nsp_loss
from lmforge.training.step import IGNORE_INDEX, token_loss

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = {PAD, CLS, SEP, MASK}
VOCAB = 64


def test_mask_tokens_follows_bert_statistics() -> None:
    """~15% of regular tokens selected; of those ~80% [MASK], ~10% random, ~10% kept; specials untouched."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (64, 512), generator=gen)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[::3, 400:] = PAD  # padded rows
    before = ids.clone()
    inputs, targets = mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, generator=gen)
    assert torch.equal(ids, before)  # input not modified
    special = torch.isin(ids, torch.tensor(sorted(SPECIAL)))
    selected = targets != IGNORE_INDEX
    assert not (selected & special).any()
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(targets[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing outside the selection changes
    assert abs(selected.sum().item() / (~special).sum().item() - 0.15) < 0.01
    n = selected.sum().item()
    masked = (inputs == MASK) & selected
    replaced = (inputs != ids) & ~masked
    kept = (inputs == ids) & selected
    n_regular = VOCAB - len(SPECIAL)  # a random replacement equals the original 1 time in n_regular
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(replaced.sum().item() / n - 0.1 * (1 - 1 / n_regular)) < 0.015
    assert abs(kept.sum().item() / n - 0.1 * (1 + 1 / n_regular)) < 0.015
    assert not torch.isin(inputs[replaced], torch.tensor(sorted(SPECIAL))).any()  # replacements regular
    # same seed, same corruption
    again = mask_tokens(
        ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, generator=torch.Generator().manual_seed(5)
    )
    other = mask_tokens(
        ids, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(again[0], other[0]) and torch.equal(again[1], other[1])


def test_mask_tokens_refuses_bad_input() -> None:
    ids = torch.randint(4, VOCAB, (2, 8))
    kwargs = {"mask_id": MASK, "vocab_size": VOCAB, "special_ids": SPECIAL}
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, **kwargs, prob=0.0)
    with pytest.raises(ValueError, match="ids must lie"):
        mask_tokens(ids + VOCAB, **kwargs)
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(ids, mask_id=VOCAB, vocab_size=VOCAB, special_ids=SPECIAL)
    with pytest.raises(ValueError, match="every id"):
        mask_tokens(ids, mask_id=MASK, vocab_size=VOCAB, special_ids=set(range(VOCAB)))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mask_tokens(ids[0], **kwargs)


def distinct_docs(n_docs: int, n_segments: int, rng: random.Random, width: int = 7) -> list[list[list[int]]]:
    """Document d uses only ids 4 + d*width .. 4 + (d+1)*width - 1; each segment is a cyclic run of them."""
    docs = []
    for d in range(n_docs):
        base, start, doc = 4 + d * width, rng.randrange(width), []
        for _ in range(n_segments):
            length = rng.randint(4, 8)
            doc.append([base + (start + k) % width for k in range(length)])
            start = (start + length) % width
        docs.append(doc)
    return docs


def doc_of(token: int) -> int:
    """The document of a token drawn by ``distinct_docs`` (width 7)."""
    return (token - 4) // 7


def test_nsp_pairs_layout_and_balance() -> None:
    rng = random.Random(0)
    docs = distinct_docs(8, 60, rng)
    batch = make_nsp_pairs(docs, max_len=12, cls_id=CLS, sep_id=SEP, pad_id=PAD, rng=rng)
    ids, types, mask, labels = (
        batch[k] for k in ("input_ids", "token_type_ids", "attention_mask", "nsp_labels")
    )
    N = 8 * 59
    assert ids.shape[0] == N and ids.shape[1] <= 12 and labels.shape == (N,)
    assert abs(labels.float().mean().item() - 0.5) < 0.06
    for r in range(N):
        row = ids[r][mask[r]].tolist()
        assert mask[r].sum() >= 5 and not (~mask[r][: mask[r].sum()]).any()  # right-padded
        assert (ids[r][~mask[r]] == PAD).all() and (types[r][~mask[r]] == 0).all()
        first_sep = row.index(SEP)
        a, b = row[1:first_sep], row[first_sep + 1 : -1]
        assert row[0] == CLS and row[-1] == SEP and a and b and SEP not in b
        assert types[r][: first_sep + 1].eq(0).all() and types[r][first_sep + 1 : len(row)].eq(1).all()
        d = r // 59  # rows follow the documents' order
        segment = docs[d][r % 59]
        assert a == segment[: len(a)] and {doc_of(t) for t in a} == {d}
        same_doc = {doc_of(t) for t in b} == {d}
        assert same_doc == (labels[r].item() == 0)  # a random segment always comes from another document
        if labels[r] == 0:
            assert b == docs[d][r % 59 + 1][: len(b)]


def test_nsp_pairs_refuse_bad_input() -> None:
    rng = random.Random(0)
    kwargs = {"cls_id": CLS, "sep_id": SEP, "pad_id": PAD, "rng": rng}
    with pytest.raises(ValueError, match="max_len"):
        make_nsp_pairs(distinct_docs(2, 3, rng), max_len=4, **kwargs)
    with pytest.raises(ValueError, match="two non-empty"):
        make_nsp_pairs(distinct_docs(1, 3, rng), max_len=16, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        make_nsp_pairs([[[4], []], [[5]]], max_len=16, **kwargs)
    with pytest.raises(ValueError, match="two consecutive"):
        make_nsp_pairs([[[4]], [[5]]], max_len=16, **kwargs)


def test_losses_are_token_loss_sums() -> None:
    logits = torch.randn(2, 5, VOCAB)
    targets = torch.full((2, 5), IGNORE_INDEX)
    targets[0, 1], targets[1, 3] = 7, 9
    loss_sum, n = mlm_loss(logits, targets)
    expected = F.cross_entropy(logits[0, 1], torch.tensor(7)) + F.cross_entropy(logits[1, 3], torch.tensor(9))
    assert n == 2 and loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_sum.item() == pytest.approx(token_loss(logits, targets)[0].item())
    nsp_logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    loss_sum, n = nsp_loss(nsp_logits, labels)
    assert n == 6
    assert loss_sum.item() == pytest.approx(
        F.cross_entropy(nsp_logits, labels, reduction="sum").item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="nsp_logits"):
        nsp_loss(nsp_logits, labels[:5])


def test_mlm_and_nsp_losses_fall() -> None:
    """A tiny encoder learns both objectives: masked tokens follow from their run, and the NSP answer
    from whether A and B share a document vocabulary. Starts near ln(V) and ln(2)."""
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    docs = distinct_docs(8, 6, rng)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=20, n_layer=2, n_head=4, n_embd=32, pos="learned")
    model = EncoderForPretraining(cfg, nsp=True)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    mlm_hist, nsp_hist = [], []
    for _ in range(120):
        batch = make_nsp_pairs(docs, max_len=20, cls_id=CLS, sep_id=SEP, pad_id=PAD, rng=rng)
        inputs, targets = mask_tokens(
            batch["input_ids"], mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, generator=gen
        )
        mlm_logits, nsp_logits = model(inputs, batch["attention_mask"], batch["token_type_ids"])
        mlm_sum, n_mlm = mlm_loss(mlm_logits, targets)
        nsp_sum, n_nsp = nsp_loss(nsp_logits, batch["nsp_labels"])
        loss = mlm_sum / max(n_mlm, 1) + nsp_sum / n_nsp
        opt.zero_grad()
        loss.backward()
        opt.step()
        mlm_hist.append(mlm_sum.item() / max(n_mlm, 1))
        nsp_hist.append(nsp_sum.item() / n_nsp)
    first_mlm, last_mlm = sum(mlm_hist[:5]) / 5, sum(mlm_hist[-10:]) / 10
    first_nsp, last_nsp = sum(nsp_hist[:5]) / 5, sum(nsp_hist[-10:]) / 10
    assert abs(mlm_hist[0] - math.log(VOCAB)) < 0.3 and abs(nsp_hist[0] - math.log(2)) < 0.1
    assert last_mlm < 0.6 * first_mlm, mlm_hist  # seen over ten seeds: <= 0.52
    assert last_nsp < 0.5 * first_nsp, nsp_hist  # seen over ten seeds: <= 0.39
