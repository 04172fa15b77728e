"""Tests for lmforge.model.lora: zero-init and merge equivalence, frozen base, switching off, files, PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge import config as lmconfig
from lmforge.errors import ConfigError, InputError
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    DEFAULT_TARGETS,
    LoraConfig,
    LoRALinear,
    apply_lora,
    disable_lora,
    load_adapter,
    lora_modules,
    lora_parameters,
    lora_policy,
    merge_lora,
    merged_state_dict,
    save_adapter,
    unmerge_lora,
)

VOCAB = 64
DEFAULT_PATHS = [
    f"{'attn' if t in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{t}" for t in DEFAULT_TARGETS
]


def tiny(**overrides) -> ModelConfig:
    """A Llama-shaped model small enough to run in milliseconds (GQA, uneven MLP width)."""
    base = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32}
    return ModelConfig(**{**base, "mlp_hidden": 48, **overrides})


def build(cfg: ModelConfig | None = None, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(cfg or tiny()).eval()


def tokens(seed: int = 1, B: int = 2, T: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model: torch.nn.Module, seed: int = 2) -> None:
    """Give every adapter a non-zero B (as after training), so the update is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def lora_model(cfg: LoraConfig | None = None, seed: int = 0) -> tuple[Decoder, Decoder]:
    """(a base model, a copy of it with adapters applied and randomised)."""
    base, model = build(seed=seed), build(seed=seed)
    apply_lora(model, cfg or LoraConfig(r=4, alpha=8.0))
    randomise_adapters(model)
    return base, model


def test_zero_initialised_b_equals_base() -> None:
    base, model = build(), build()
    names = apply_lora(model, LoraConfig(r=4, alpha=8.0))
    assert names == [f"blocks.{i}.{p}" for i in range(2) for p in DEFAULT_PATHS]
    for m in lora_modules(model).values():
        assert torch.count_nonzero(m.lora_B) == 0 and torch.count_nonzero(m.lora_A) > 0
        assert m.lora_A.shape == (4, m.in_features) and m.lora_B.shape == (m.out_features, 4)
        assert m.scaling == 2.0
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), base(idx), rtol=0, atol=1e-6)


def test_only_lora_parameters_are_trainable() -> None:
    _, model = lora_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    assert len(lora_parameters(model)) == 2 * 14
    assert all(isinstance(m.base, torch.nn.Linear) for m in lora_modules(model).values())


def test_targets_last_component_and_regex() -> None:
    model = build()
    assert apply_lora(model, LoraConfig(targets=("q_proj", "down_proj"))) == [
        "blocks.0.attn.q_proj",
        "blocks.0.mlp.down_proj",
        "blocks.1.attn.q_proj",
        "blocks.1.mlp.down_proj",
    ]
    model = build()
    assert apply_lora(model, LoraConfig(targets=(r"blocks\.1\.attn\.[qv]_proj",))) == [
        "blocks.1.attn.q_proj",
        "blocks.1.attn.v_proj",
    ]
    assert not LoraConfig(targets=("proj",)).matches("blocks.0.attn.q_proj")  # whole component only


def test_no_match_names_targets_and_linears() -> None:
    with pytest.raises(ValueError, match=r"\['qkv'\].*q_proj.*blocks\.0\.attn\.q_proj"):
        apply_lora(build(), LoraConfig(targets=("qkv",)))


def test_tied_head_and_double_apply_are_refused() -> None:
    with pytest.raises(ValueError, match="tied"):
        apply_lora(build(), LoraConfig(targets=("lm_head",)))
    untied = build(tiny(tie_embeddings=False))
    assert apply_lora(untied, LoraConfig(targets=("lm_head",))) == ["lm_head"]
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(untied, LoraConfig())


@pytest.mark.parametrize(
    ("field", "value"),
    [("r", 0), ("alpha", 0.0), ("dropout", 1.0), ("targets", ()), ("targets", ("q_proj[",))],
)
def test_config_rejects_impossible_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        LoraConfig(**{field: value}).validate()
    assert err.value.key == field


def test_config_loads_through_the_config_system() -> None:
    cfg = lmconfig.from_dict(LoraConfig, {"r": 2, "targets": ["q_proj", "v_proj"]})
    assert cfg.targets == ("q_proj", "v_proj") and cfg.r == 2 and cfg.scaling == 8.0


def test_merged_equals_unmerged_and_unmerge_restores_base() -> None:
    base, model = lora_model()
    idx = tokens()
    weights = {n: m.base.weight.clone() for n, m in lora_modules(model).items()}
    with torch.no_grad():
        unmerged = model(idx)
        assert (unmerged - base(idx)).abs().amax() > 1e-2  # the adapters do something
        merge_lora(model)
        merge_lora(model)  # idempotent
        assert all(m.merged for m in lora_modules(model).values())
        torch.testing.assert_close(model(idx), unmerged, rtol=0, atol=1e-5)
        unmerge_lora(model)
        unmerge_lora(model)
        assert not any(m.merged for m in lora_modules(model).values())
        torch.testing.assert_close(model(idx), unmerged, rtol=0, atol=1e-5)
    for name, m in lora_modules(model).items():
        torch.testing.assert_close(m.base.weight, weights[name], rtol=0, atol=1e-6)


def test_disable_lora_gives_the_base_model() -> None:
    base, model = lora_model()
    idx = tokens()
    with torch.no_grad():
        expected, tuned = base(idx), model(idx)
        with disable_lora(model) as reference:
            assert reference is model
            torch.testing.assert_close(model(idx), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(idx), tuned, rtol=0, atol=0)
        merge_lora(model)
        with disable_lora(model):  # merged: the update is taken back out
            torch.testing.assert_close(model(idx), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(idx), tuned, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError), disable_lora(model):
        raise RuntimeError("boom")
    assert all(m.enabled for m in lora_modules(model).values())  # restored after an exception
    with pytest.raises(ValueError, match="no LoRA layers"), disable_lora(build()):
        pass


def test_training_changes_every_adapter_and_nothing_else() -> None:
    """After a few steps every adapter tensor changed and every frozen tensor is bit-identical."""
    model = build(tiny(dropout=0.1)).train()
    apply_lora(model, LoraConfig(r=2, alpha=4.0, dropout=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2, weight_decay=0.1)
    idx = tokens(B=4, T=16)
    for _ in range(3):  # B starts at zero, so A has no gradient until B has moved
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    lora_names = {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert len(lora_names) == 28
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == (key in lora_names), key


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, alpha=8.0, dropout=0.05, targets=("q_proj", "v_proj", "down_proj"))
    _, model = lora_model(cfg)
    out = save_adapter(model, tmp_path / "adapter", cfg, base_model_name_or_path="runs/x/pretrain")
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]
    saved = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 8.0, 0.05)
    assert saved["target_modules"] == ["q_proj", "v_proj", "down_proj"]
    assert saved["base_model_name_or_path"] == "runs/x/pretrain"

    fresh = build()
    loaded = load_adapter(fresh, out)
    assert loaded == cfg
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), model(idx), rtol=0, atol=0)
    assert {id(p) for p in fresh.parameters() if p.requires_grad} == {id(p) for p in lora_parameters(fresh)}


def test_save_uses_peft_names_and_regex_targets_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = LoraConfig(r=2, alpha=2.0, targets=(r"blocks\.1\.attn\.(q|o)_proj",))
    _, model = lora_model(cfg)
    save_adapter(model, tmp_path, cfg)
    assert sorted(load_file(str(tmp_path / ADAPTER_WEIGHTS_FILE))) == [
        f"base_model.model.model.layers.1.self_attn.{p}_proj.lora_{ab}.weight" for p in "oq" for ab in "AB"
    ]
    saved = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert saved["target_modules"] == ["model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.q_proj"]
    fresh = build()
    loaded = load_adapter(fresh, tmp_path)
    assert sorted(lora_modules(fresh)) == ["blocks.1.attn.o_proj", "blocks.1.attn.q_proj"]
    assert all(loaded.matches(n) for n in lora_modules(fresh))
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens()), model(tokens()), rtol=0, atol=0)


def test_non_llama_model_round_trips_under_its_own_names(tmp_path: Path) -> None:
    from lmforge.model.heads import EncoderForPretraining

    cfg = tiny(arch="encoder", pos="learned")
    torch.manual_seed(0)
    model = EncoderForPretraining(cfg, nsp=False).eval()
    torch.manual_seed(0)
    fresh = EncoderForPretraining(cfg, nsp=False).eval()
    lcfg = LoraConfig(r=2, targets=("q_proj", "dense"))
    apply_lora(model, lcfg)
    randomise_adapters(model)
    save_adapter(model, tmp_path, lcfg)
    assert load_adapter(fresh, tmp_path) == lcfg
    assert "mlm_head.dense" in lora_modules(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens())[0], model(tokens())[0], rtol=0, atol=0)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    cfg = LoraConfig(r=2, alpha=4.0)
    _, model = lora_model(cfg)
    save_adapter(model, tmp_path / "ok", cfg)
    with pytest.raises(InputError, match="adapter config not found"):
        load_adapter(build(), tmp_path / "missing")
    with pytest.raises(InputError, match="does not have"):  # layer 1 is missing in a 1-layer model
        load_adapter(build(tiny(n_layer=1)), tmp_path / "ok")
    with pytest.raises(InputError, match=r"lora_[AB] has shape \(\d+, \d+\), expected"):
        load_adapter(build(tiny(n_embd=64, n_head=4)), tmp_path / "ok")

    config = json.loads((tmp_path / "ok" / ADAPTER_CONFIG_FILE).read_text())
    (tmp_path / "ok" / ADAPTER_CONFIG_FILE).write_text(json.dumps({**config, "r": 3}))
    untouched = build()
    with pytest.raises(
        InputError, match=r"blocks.0.attn.q_proj lora_A has shape \(2, 32\), expected \(3, 32\)"
    ):
        load_adapter(untouched, tmp_path / "ok")
    assert not lora_modules(untouched)  # a failed load leaves the model alone
    (tmp_path / "ok" / ADAPTER_CONFIG_FILE).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(InputError, match="use_dora"):
        load_adapter(build(), tmp_path / "ok")
    (tmp_path / "ok" / ADAPTER_CONFIG_FILE).write_text(json.dumps(config))
    (tmp_path / "ok" / ADAPTER_WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="adapter weights not found"):
        load_adapter(build(), tmp_path / "ok")


def test_merged_state_dict_is_a_plain_checkpoint() -> None:
    _, model = lora_model()
    idx = tokens()
    plain = Decoder(tiny()).eval()
    for merge_first in (False, True):
        if merge_first:
            merge_lora(model)
        state = merged_state_dict(model)
        assert list(state) == list(plain.state_dict())
        plain.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(plain(idx), model(idx), rtol=0, atol=1e-5)


def test_lora_linear_reads_through_and_rejects_non_linear() -> None:
    layer = LoRALinear(torch.nn.Linear(6, 5), r=3, alpha=6.0)
    assert (layer.in_features, layer.out_features) == (6, 5)
    assert layer.weight is layer.base.weight and layer.bias is layer.base.bias
    assert not layer.weight.requires_grad and layer.lora_A.requires_grad
    assert not LoRALinear(torch.nn.Linear(6, 5).eval(), r=1, alpha=1.0).training  # keeps eval mode
    with pytest.raises(TypeError):
        LoRALinear(torch.nn.Conv1d(2, 2, 1), r=1, alpha=1.0)  # type: ignore[arg-type]


@pytest.mark.slow  # importing transformers and peft alone takes several seconds
def test_peft_loads_our_adapter_with_the_same_logits(tmp_path: Path) -> None:
    """PeftModel on a LlamaForCausalLM built from our config and weights computes our logits."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from lmforge.model.hf_names import to_hf_state_dict, to_llama_config

    mcfg = tiny()
    cfg = LoraConfig(r=4, alpha=8.0)
    base, model = lora_model(cfg)
    save_adapter(model, tmp_path, cfg)
    hf = transformers.LlamaForCausalLM(to_llama_config(mcfg)).eval()
    hf.load_state_dict(to_hf_state_dict(base.state_dict(), mcfg))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=idx).logits, model(idx), rtol=0, atol=1e-4)
        with peft_model.disable_adapter(), disable_lora(model):
            torch.testing.assert_close(peft_model(input_ids=idx).logits, model(idx), rtol=0, atol=1e-4)

    # and the other way: an adapter written by PEFT loads into our decoder
    peft_model.save_pretrained(str(tmp_path / "from_peft"))
    fresh = build()
    load_adapter(fresh, tmp_path / "from_peft")
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), model(idx), rtol=0, atol=0)


def test_lora_policy_is_the_whole_model_or_adapters() -> None:
    model = build()
    assert lora_policy(model, 0, 16.0) is None and not lora_modules(model)
    assert all(p.requires_grad for p in model.parameters())  # r = 0: every weight trains
    cfg = lora_policy(model, 4, 8.0)
    assert cfg is not None and (cfg.r, cfg.alpha, cfg.targets) == (4, 8.0, DEFAULT_TARGETS)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)} and len(lora_modules(model)) > 0
