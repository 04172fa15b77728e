"""Tests for lmforge.model.encoder and heads: bidirectionality, padding masks, init loss, heads, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.model.config import POS_CHOICES, ModelConfig
from lmforge.model.encoder import Encoder
from lmforge.model.heads import (
    ClassificationHead,
    EncoderForPretraining,
    MLMHead,
    NSPHead,
    ScalarHead,
    SpanHead,
    pool,
)

VOCAB = 64


def tiny(**overrides) -> ModelConfig:
    """An encoder small enough to run in milliseconds."""
    base = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    return ModelConfig(**{**base, **overrides})


def build(cfg: ModelConfig, seed: int = 0, **kwargs) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(cfg, **kwargs).eval()


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_bidirectional(pos: str) -> None:
    """Changing token t changes the hidden states before t too (no causal mask), for every position scheme."""
    model = build(tiny(pos=pos, n_kv_head=2, qk_norm=True))
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, 16))
    t = 12
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert a.shape == (2, 16, 32)
    assert ((a[:, :t] - b[:, :t]).abs().amax(dim=-1) > 1e-6).all()  # every earlier position moved


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_padding_does_not_reach_real_tokens(pos: str) -> None:
    """Changing padded tokens (ids and token types) leaves every real position's output unchanged."""
    model = build(tiny(pos=pos))
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB, (3, 16))
    lengths = torch.tensor([16, 9, 4])
    mask = torch.arange(16)[None, :] < lengths[:, None]  # [3, 16]
    types = (torch.arange(16)[None, :] >= 3).long().expand(3, 16) * mask
    changed = torch.where(mask, idx, (idx + 7) % VOCAB)
    changed_types = torch.where(mask, types, 1)
    with torch.no_grad():
        a = model(idx, mask, types)
        b = model(changed, mask, changed_types)
        unmasked = model(changed, None, changed_types)
    torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)
    assert (a[~mask] != b[~mask]).any()  # padded positions themselves did change
    assert (unmasked[1, :9] - a[1, :9]).abs().amax() > 1e-4  # without the mask padding would leak
    # the unpadded row is the same as running it alone without a mask
    with torch.no_grad():
        alone = model(idx[:1], None, types[:1])
    torch.testing.assert_close(a[:1], alone, rtol=0, atol=1e-5)


def test_alibi_is_symmetric() -> None:
    """With ALiBi the only position signal is -slope * |i - j|, so reversing the input reverses the output
    (a signed, one-sided distance would not survive the reversal)."""
    model = build(tiny(pos="alibi"))
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx.flip(1)), model(idx).flip(1), rtol=0, atol=1e-5)


def test_all_padding_row_is_finite() -> None:
    for pos in ("rope", "alibi"):
        model = build(tiny(pos=pos))
        idx = torch.randint(0, VOCAB, (2, 8))
        mask = torch.tensor([[True] * 8, [False] * 8])
        with torch.no_grad():
            assert torch.isfinite(model(idx, mask)).all()


def test_token_types_matter_and_default_to_zero() -> None:
    model = build(tiny())
    idx = torch.randint(0, VOCAB, (2, 10))
    zeros, ones = torch.zeros_like(idx), torch.ones_like(idx)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model(idx, None, zeros))
        assert (model(idx, None, ones) - model(idx)).abs().amax() > 1e-4
    no_seg = build(tiny(), n_segments=0)
    assert no_seg.seg_emb is None
    with pytest.raises(ValueError, match="n_segments=0"):
        no_seg(idx, None, zeros)


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_initial_mlm_loss_is_uniform(pos: str) -> None:
    cfg = tiny(vocab_size=256, n_embd=64, pos=pos, block_size=32)
    torch.manual_seed(0)
    model = EncoderForPretraining(cfg, nsp=True).eval()
    idx = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        mlm, nsp = model(idx)
    assert abs(F.cross_entropy(mlm.flatten(0, 1), idx.flatten()).item() - math.log(256)) < 0.3
    assert abs(F.cross_entropy(nsp, torch.tensor([0, 1, 0, 1])).item() - math.log(2)) < 0.05


def test_mlm_head_is_tied_and_every_parameter_gets_a_gradient() -> None:
    cfg = tiny(bias=True, qk_norm=True, norm="layernorm", pos="learned")
    torch.manual_seed(0)
    model = EncoderForPretraining(cfg, nsp=True)
    assert model.mlm_head.decoder.weight is model.encoder.tok_emb.weight
    idx = torch.randint(0, VOCAB, (2, 12))
    types = torch.randint(0, 2, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mlm, nsp = model(idx, mask, types)
    (
        F.cross_entropy(mlm.flatten(0, 1), idx.flatten()) + F.cross_entropy(nsp, torch.tensor([0, 1]))
    ).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    untied = EncoderForPretraining(tiny(tie_embeddings=False), nsp=False)
    assert untied.nsp_head is None
    assert untied.mlm_head.decoder.weight is not untied.encoder.tok_emb.weight
    assert untied.num_params() == model_params_by_hand(tiny(tie_embeddings=False))


def model_params_by_hand(cfg: ModelConfig) -> int:
    """Non-embedding parameters of an untied, bias-free, rmsnorm, rope EncoderForPretraining without NSP."""
    D, V, L, hidden = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.hidden_dim
    block = 4 * D * D + 3 * D * hidden + 2 * D  # q, k, v, o; gate, up, down; two norm gains
    head = D * D + D + D * V + V  # dense, norm gain, decoder, output bias
    return L * block + D + head  # + final norm


def test_init_weights_follows_its_docstring() -> None:
    cfg = tiny(n_layer=8, n_embd=64, pos="learned", bias=True, norm="layernorm")
    model = build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    model.init_weights()
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(model.seg_emb.weight.std().item() - 0.02) < 0.01
    assert abs(model.pos_emb.weight.std().item() - 0.02) < 0.003
    assert abs(model.blocks[0].attn.o_proj.weight.std().item() - 0.02 / 4) < 0.0015
    assert model.blocks[0].attn.q_proj.bias.abs().sum() == 0
    assert (model.norm.weight == 1).all()


def test_pool_respects_padding() -> None:
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "mean")[1], hidden[1, :3].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "mean")[2], hidden[2, 2:4].mean(0))
    torch.testing.assert_close(
        pool(hidden, mask, "last"), torch.stack([hidden[0, 4], hidden[1, 2], hidden[2, 3]])
    )
    torch.testing.assert_close(pool(hidden, None, "last"), hidden[:, -1])
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classification_and_scalar_heads_ignore_padded_positions(pooling: str) -> None:
    cfg = tiny()
    torch.manual_seed(0)
    cls_head, scalar_head = ClassificationHead(cfg, 3, pooling=pooling), ScalarHead(cfg, pooling=pooling)
    hidden = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    noisy = torch.where(mask[:, :, None], hidden, torch.randn_like(hidden) * 10)
    assert cls_head(hidden, mask).shape == (2, 3) and scalar_head(hidden, mask).shape == (2,)
    torch.testing.assert_close(cls_head(hidden, mask), cls_head(noisy, mask))
    torch.testing.assert_close(scalar_head(hidden, mask), scalar_head(noisy, mask))
    assert (cls_head(hidden) - cls_head(noisy)).abs().amax() > 1e-4  # without the mask the noise shows
    assert ScalarHead(cfg, pooling="none")(hidden).shape == (2, 6)


def test_heads_shapes_and_bad_arguments() -> None:
    cfg = tiny()
    assert NSPHead(cfg)(torch.randn(2, 5, 32)).shape == (2, 2)
    with pytest.raises(ValueError, match="n_classes"):
        ClassificationHead(cfg, 0)
    with pytest.raises(ValueError, match="unknown pooling"):
        ClassificationHead(cfg, 2, pooling="max")
    with pytest.raises(ValueError, match="unknown pooling"):
        ScalarHead(cfg, pooling="max")
    with pytest.raises(ValueError, match="tok_emb"):
        MLMHead(cfg, torch.nn.Embedding(VOCAB + 1, 32))


def test_span_head_gives_a_start_and_an_end_logit_per_token() -> None:
    cfg = tiny()
    torch.manual_seed(0)
    head = SpanHead(cfg)
    assert head.proj.weight.shape == (2, 32) and torch.equal(head.proj.bias, torch.zeros(2))
    assert abs(float(head.proj.weight.detach().std()) - 0.02) < 0.01
    hidden = torch.randn(3, 7, 32)
    start, end = head(hidden)
    assert start.shape == end.shape == (3, 7)
    # the start logit of token i reads h_i only (S . h_i + b): no mixing across positions
    torch.testing.assert_close(start, hidden @ head.proj.weight[0] + head.proj.bias[0])
    torch.testing.assert_close(end, hidden @ head.proj.weight[1] + head.proj.bias[1])


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        Encoder(tiny(vocab_size=0))
    with pytest.raises(ValueError, match="n_segments"):
        Encoder(tiny(), n_segments=-1)
    model = build(tiny())
    idx = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, VOCAB, (1, 17)))
    with pytest.raises(ValueError, match="idx"):
        model(idx.float())
    with pytest.raises(ValueError, match="attention_mask"):
        model(idx, torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(idx, None, torch.zeros(2, 7, dtype=torch.long))


def test_post_norm_blocks_and_embedding_norm_follow_bert() -> None:
    """``post_norm`` + ``emb_norm``: the embedding sum is normalised, each block is
    ``x = attn_norm(x + attn(x)); x = mlp_norm(x + mlp(x))``, and there is no final norm."""
    cfg = ModelConfig(
        arch="encoder", vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, norm="layernorm",
        bias=True, mlp="gelu", pos="learned", post_norm=True, emb_norm=True, norm_eps=1e-12,
    )  # fmt: skip
    torch.manual_seed(0)
    enc = Encoder(cfg).eval()
    assert isinstance(enc.norm, torch.nn.Identity)
    idx = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        x = enc.emb_norm(enc.tok_emb(idx) + enc.seg_emb.weight[0] + enc.pos_emb.weight[:7])
        for block in enc.blocks:
            a = block.attn
            q, k, v = (p(x).view(2, 7, 2, 16).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
            att = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v  # [B, H, T, Q]
            x = block.attn_norm(x + a.o_proj(att.transpose(1, 2).reshape(2, 7, 32)))
            x = block.mlp_norm(x + block.mlp.down_proj(torch.nn.functional.gelu(block.mlp.up_proj(x))))
        torch.testing.assert_close(enc(idx), x, rtol=1e-5, atol=1e-5)


def test_bert_options_are_encoder_only() -> None:
    for key in ("post_norm", "emb_norm"):
        with pytest.raises(ConfigError, match=key):
            ModelConfig(arch="decoder", vocab_size=10, **{key: True}).validate()
