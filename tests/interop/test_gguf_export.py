"""lmforge export to GGUF: read back with gguf.GGUFReader, every tensor and metadata key is checked, and a
forward pass written from llama.cpp's semantics (adjacent-pair RoPE) over the file's tensors computes
our logits, which is what the q/k permutation is for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig

gguf = pytest.importorskip("gguf")

from lmforge.interop.gguf_export import export_gguf, rope_permute  # noqa: E402 (after the skip)

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


def tiny_checkpoint(root: Path, vocab_pad: int = 0, pre_tokenizer: str = "", **overrides) -> Path:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    texts = [" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10
    tok = train_bpe(texts, vocab_size=300, pre_tokenizer=pre_tokenizer)
    tok_path = save_tokenizer(tok, root / "tok")
    base = {"block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "mlp_hidden": 48}
    cfg = ModelConfig(**{"vocab_size": tok.get_vocab_size() + vocab_pad, **base, **overrides})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
            elif ".q_proj." in name or ".k_proj." in name:
                p.mul_(10.0)  # sharp attention, so a wrong RoPE layout shows in the logits
    return save_checkpoint(root / "ckpt", model, cfg, tokenizer_path=tok_path)


def read(path: Path) -> tuple[dict, dict]:
    """(metadata key → value, tensor name → (torch tensor as stored, GGML type)) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (torch.from_numpy(np.array(t.data)), t.tensor_type) for t in reader.tensors}
    return fields, tensors


def ggml_llama_logits(meta: dict, tensors: dict, idx: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, V]`` computed as llama.cpp's llama graph does, from the file alone.

    RoPE is llama.cpp's NORM mode (LLAMA_ROPE_TYPE_NORM): channels (2i, 2i+1) of a head rotate together
    by ``pos * base ** (-2i / n_rot)``, i.e. not our half-split layout.
    """
    W = {name: t.float() for name, (t, _) in tensors.items()}
    H, K = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    eps, base = meta["llama.attention.layer_norm_rms_epsilon"], meta["llama.rope.freq_base"]
    D = meta["llama.embedding_length"]
    Q = D // H
    T = idx.shape[0]

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ W[f"{name}.weight"].T + W.get(f"{name}.bias", 0)

    angles = torch.arange(T)[:, None] * base ** (-torch.arange(0, Q, 2) / Q)  # [T, Q/2]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [T, 1, Q/2]

    def rope_adjacent(x: torch.Tensor) -> torch.Tensor:  # [T, n, Q]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    x = W["token_embd.weight"][idx]  # [T, D]
    for i in range(meta["llama.block_count"]):
        b = f"blk.{i}"
        h = rms(x, W[f"{b}.attn_norm.weight"])
        q = rope_adjacent(lin(h, f"{b}.attn_q").view(T, H, Q)).transpose(0, 1)  # [H, T, Q]
        k = rope_adjacent(lin(h, f"{b}.attn_k").view(T, K, Q)).transpose(0, 1)  # [K, T, Q]
        v = lin(h, f"{b}.attn_v").view(T, K, Q).transpose(0, 1)
        k, v = k.repeat_interleave(H // K, 0), v.repeat_interleave(H // K, 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [H, T, Q]
        x = x + lin(y.transpose(0, 1).reshape(T, D), f"{b}.attn_output")
        h = rms(x, W[f"{b}.ffn_norm.weight"])
        x = x + lin(F.silu(lin(h, f"{b}.ffn_gate")) * lin(h, f"{b}.ffn_up"), f"{b}.ffn_down")
    out = W.get("output.weight", W["token_embd.weight"])  # llama.cpp reuses token_embd when tied
    return rms(x, W["output_norm.weight"]) @ out.T


@pytest.mark.parametrize(
    "overrides", [{}, {"tie_embeddings": False, "bias": True, "rope_theta": 500.0, "norm_eps": 1e-6}]
)
def test_gguf_reads_back_and_llama_cpp_semantics_give_our_logits(tmp_path: Path, overrides: dict) -> None:
    ckpt = tiny_checkpoint(tmp_path, **overrides)
    model = export_gguf(ckpt, tmp_path / "m.gguf")
    cfg = model.config
    meta, tensors = read(tmp_path / "m.gguf")
    expected_meta = {
        "general.architecture": "llama",
        "llama.context_length": 32,
        "llama.embedding_length": 32,
        "llama.block_count": 2,
        "llama.feed_forward_length": 48,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": cfg.vocab_size,
        "general.file_type": 0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.padding_token_id": 2,
    }
    for key, value in expected_meta.items():
        assert meta[key] == value, key
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)

    # every tensor: its name, shape and values (q/k permuted for GGML's RoPE, nothing else changed)
    sd = model.state_dict()
    want = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        want["output.weight"] = sd["lm_head.weight"]
    ours = {"attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj"}
    ours |= {"attn_output": "attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj"}
    ours |= {"ffn_down": "mlp.down_proj"}
    for i in range(cfg.n_layer):
        want[f"blk.{i}.attn_norm.weight"] = sd[f"blocks.{i}.attn_norm.weight"]
        want[f"blk.{i}.ffn_norm.weight"] = sd[f"blocks.{i}.mlp_norm.weight"]
        for theirs, mine in ours.items():
            for p in ("weight", "bias") if cfg.bias else ("weight",):
                value = sd[f"blocks.{i}.{mine}.{p}"]
                if theirs in ("attn_q", "attn_k"):
                    value = rope_permute(value, cfg.n_head if theirs == "attn_q" else cfg.kv_heads)
                want[f"blk.{i}.{theirs}.{p}"] = value
    assert set(tensors) == set(want)
    for name, value in want.items():
        stored, kind = tensors[name]
        assert kind == gguf.GGMLQuantizationType.F32, name
        assert torch.equal(stored, value), name

    idx = torch.randint(0, 200, (32,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            ggml_llama_logits(meta, tensors, idx), model(idx[None])[0], rtol=0, atol=1e-4
        )
        # without the permutation llama.cpp's rotation would compute something else
        unpermuted = dict(tensors)
        for name in [n for n in tensors if ".attn_q." in n or ".attn_k." in n]:
            heads = cfg.n_head if ".attn_q." in name else cfg.kv_heads
            back = tensors[name][0].reshape(heads, -1, 2, *tensors[name][0].shape[1:]).swapaxes(1, 2)
            unpermuted[name] = (back.reshape(tensors[name][0].shape), tensors[name][1])
        assert (ggml_llama_logits(meta, unpermuted, idx) - model(idx[None])[0]).abs().max() > 1e-3


def test_rope_permute_is_llama_cpp_permutation() -> None:
    """Rows j and j + Q/2 of each head become rows 2j and 2j+1 (llama.cpp's LlamaModel.permute)."""
    H, Q = 2, 8
    w = torch.arange(H * Q, dtype=torch.float32)[:, None].expand(H * Q, 3)
    rows = rope_permute(w, H)[:, 0].long().tolist()
    assert rows == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_tokenizer_metadata(tmp_path: Path) -> None:
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path, vocab_pad=5)
    export_gguf(ckpt, tmp_path / "m.gguf")
    meta, _ = read(tmp_path / "m.gguf")
    tok = load_tokenizer(ckpt / "tokenizer.json")
    n = tok.get_vocab_size()
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == n + 5
    assert all(tokens[i] == tok.id_to_token(i) for i in range(n))
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 5)] and set(types[n:]) == {gguf.TokenType.UNUSED}
    special = {tok.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|end|>", "[MASK]")}
    assert all(types[i] == gguf.TokenType.CONTROL for i in special)
    assert types[tok.token_to_id("Ġcat")] == gguf.TokenType.NORMAL
    merges = json.loads(tok.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert "<|assistant|>" in meta["tokenizer.chat_template"]
    # llama.cpp adds <|bos|> to whatever it tokenizes: the template must not write a second one
    assert "<|bos|>" not in meta["tokenizer.chat_template"]


def test_f16_keeps_norms_f32(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, bias=True)
    model = export_gguf(ckpt, tmp_path / "m.gguf", dtype="f16")
    meta, tensors = read(tmp_path / "m.gguf")
    assert meta["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    for name, (value, kind) in tensors.items():
        want = gguf.GGMLQuantizationType.F16 if value.dim() == 2 else gguf.GGMLQuantizationType.F32
        assert kind == want, name
    emb = model.tok_emb.weight.detach()
    assert torch.equal(tensors["token_embd.weight"][0], emb.half())


def test_gpt4_pre_tokenizer_maps_to_llama_bpe(tmp_path: Path) -> None:
    export_gguf(tiny_checkpoint(tmp_path, pre_tokenizer="gpt4"), tmp_path / "m.gguf")
    assert read(tmp_path / "m.gguf")[0]["tokenizer.ggml.pre"] == "llama-bpe"


def test_refusals_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mlp='gelu'"):
        export_gguf(tiny_checkpoint(tmp_path / "a", mlp="gelu"), tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="dtype must be one of f32, f16"):
        export_gguf(tiny_checkpoint(tmp_path / "b"), tmp_path / "b.gguf", dtype="q4")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()


def test_non_bpe_tokenizer_is_refused(tmp_path: Path) -> None:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.tokenizer.train import TokenizerSpec, save_tokenizer, train_tokenizer

    tok = train_tokenizer([" ".join(WORDS)] * 20, TokenizerSpec("word", 64, 1))
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    ckpt = save_checkpoint(
        tmp_path / "c", build_model(cfg), cfg, tokenizer_path=save_tokenizer(tok, tmp_path / "t")
    )
    with pytest.raises(InputError, match="byte-level BPE"):
        export_gguf(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "bias": True, "rope_theta": 500.0}])
def test_llama_cpp_runs_the_file_with_our_logits_and_tokens(tmp_path: Path, overrides: dict) -> None:
    """Optional: only where llama-cpp-python is installed (it compiles llama.cpp; CI does not)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional)")
    from lmforge.tokenizer.train import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path, **overrides)
    model = export_gguf(ckpt, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "m.gguf"), n_ctx=32, n_batch=32, logits_all=True, n_threads=1, verbose=False
    )
    tok = load_tokenizer(ckpt / "tokenizer.json")
    text = "the cat sat on a mat, and the dog ran to the park!"
    assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text, add_special_tokens=False).ids
    assert llm.tokenize(text.encode(), add_bos=True)[0] == tok.token_to_id("<|bos|>")
    ids = [0] + tok.encode(text, add_special_tokens=False).ids
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
