"""Tests for lmforge.training.optim: learning-rate schedules and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.training.optim import build_optimizer, lr_at, param_groups

BASE = 1.0


def lr(step: int, schedule: str, **kw) -> float:
    args = {"max_steps": 100, "base_lr": BASE, "warmup_steps": 10, "schedule": schedule, "min_lr_ratio": 0.1}
    return lr_at(step, **{**args, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_and_reaches_base(schedule: str) -> None:
    assert lr(0, schedule) == pytest.approx(0.1)
    assert lr(4, schedule) == pytest.approx(0.5)
    assert lr(9, schedule) == pytest.approx(BASE)
    assert lr(10, schedule) == pytest.approx(BASE)
    assert lr(0, schedule, warmup_steps=0) == pytest.approx(BASE)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_decays_end_at_min_lr_and_never_rise(schedule: str) -> None:
    values = [lr(s, schedule) for s in range(10, 121)]
    assert values[0] == pytest.approx(BASE)
    assert lr(100, schedule) == pytest.approx(0.1)
    assert lr(120, schedule) == pytest.approx(0.1)  # past max_steps: stays at min_lr
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))


def test_step_lr_reads_the_schedule_options() -> None:
    from lmforge.training.optim import step_lr
    from lmforge.training.options import TrainOptions

    opts = TrainOptions(max_steps=40, lr=0.5, warmup_steps=4, schedule="linear", min_lr_ratio=0.2)
    assert step_lr(opts, 1) == pytest.approx(0.5 * 2 / 4)  # warmup_steps: step 1 of 4
    assert step_lr(opts, 40) == pytest.approx(0.1)  # the end of max_steps: min_lr
    assert step_lr(opts, 20, max_steps=20) == pytest.approx(0.1)  # a shorter schedule ends sooner
    assert step_lr(opts, 20) == pytest.approx(0.5 + (0.1 - 0.5) * 16 / 36)
    opts.warmup_ratio = 0.25  # the ratio, not warmup_steps: 10 warmup steps
    assert step_lr(opts, 4) == pytest.approx(0.5 * 5 / 10)


def test_cosine_and_linear_midpoints() -> None:
    # decay runs over steps 10..100, midpoint 55
    assert lr(55, "cosine") == pytest.approx(0.55)
    assert lr(55, "linear") == pytest.approx(0.55)
    early = lr(32, "cosine")  # 22 of 90 decay steps done
    assert early == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert early > lr(32, "linear")  # cosine stays higher early in the decay


def test_constant_holds_base_lr() -> None:
    assert {lr(s, "constant") for s in range(10, 150)} == {BASE}


def test_wsd_shape() -> None:
    # decay_fraction 0.2 of 100 steps: stable through step 80, then linear to min_lr at 100
    assert all(lr(s, "wsd") == BASE for s in range(10, 81))
    assert lr(90, "wsd") == pytest.approx(0.55)
    assert lr(95, "wsd") == pytest.approx(0.325)
    assert lr(100, "wsd") == pytest.approx(0.1)
    assert lr(70, "wsd", decay_fraction=0.5) == pytest.approx(0.1 + 0.9 * 0.6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"warmup_steps": 101}, "warmup_steps must be in"),
        ({"max_steps": 0, "warmup_steps": 0}, "max_steps must be >= 1"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"decay_fraction": 0.0}, "decay_fraction"),
        ({"base_lr": -1.0}, "base_lr"),
    ],
)
def test_lr_at_rejects_bad_arguments(kw: dict, match: str) -> None:
    args = {"schedule": "cosine", **kw}
    with pytest.raises(ValueError, match=match):
        lr(5, **args)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr(-1, "cosine")


def _model(**overrides) -> Decoder:
    torch.manual_seed(0)
    base = {"vocab_size": 32, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}
    return Decoder(ModelConfig(**{**base, **overrides}))


def test_norms_and_biases_are_not_decayed() -> None:
    model = _model(bias=True, norm="layernorm", qk_norm=True, pos="learned")
    decay, no_decay = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert no_decay_names == {n for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n}
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.0.attn.q_proj.weight"} <= decay_names
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    # the tied head is the token table: every parameter appears exactly once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_decay_shrinks_matrices_only() -> None:
    """With zero gradients AdamW's only effect is decoupled decay: W <- W * (1 - lr * wd)."""
    model = _model(bias=True)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 0.95 if p.ndim >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)


def test_build_optimizer_validates() -> None:
    model = _model()
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(model, lr=-1.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="betas"):
        build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 1.0))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, lr=1e-3, weight_decay=0.0)


def test_muon_lr_and_momentum_apply_to_the_muon_matrices_only() -> None:
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.training.optim import build_optimizers, scaled_lr

    model = Decoder(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16))
    muon, adamw = build_optimizers(model, "muon", 1e-3, 0.1, muon_lr=4e-3)
    assert all(g["lr"] == 4e-3 for g in muon.param_groups)
    assert scaled_lr(muon, 5e-4) == pytest.approx(2e-3) and scaled_lr(adamw, 5e-4) == 5e-4
    same, _ = build_optimizers(model, "muon", 1e-3, 0.1)  # muon_lr 0: the one lr
    assert scaled_lr(same, 5e-4) == 5e-4
    # the scale is not optimiser state: a checkpoint of one loads into optimisers built without it
    same.load_state_dict(muon.state_dict())
    with pytest.raises(ValueError, match="muon_lr"):
        build_optimizers(model, "muon", 1e-3, 0.1, muon_lr=-1.0)
    slow, _ = build_optimizers(model, "muon", 1e-3, 0.1, muon_momentum=0.9)
    assert {g["momentum"] for g in slow.param_groups} == {0.9} and same.param_groups[0]["momentum"] == 0.95
    with pytest.raises(ValueError, match="muon_momentum"):
        build_optimizers(model, "muon", 1e-3, 0.1, muon_momentum=1.0)


def _group_lr(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    """name → the learning rate of the group holding that parameter."""
    where = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return {n: where[id(p)] for n, p in model.named_parameters() if id(p) in where}


def test_layer_lr_decay_gives_each_depth_its_hand_computed_lr() -> None:
    """BERT-shaped trunk (post-norm, embedding norm, segments) under a classification head, 2 blocks,
    decay 0.5, at step 4 of a linear warmup of 10 to 0.1: every group's lr equals lr·decay^depth."""
    from lmforge.model.heads import EncoderForPretraining
    from lmforge.training.finetune import TaskClassifier
    from lmforge.training.optim import set_lr

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="encoder", vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, pos="learned",
        norm="layernorm", bias=True, post_norm=True, emb_norm=True,
    )  # fmt: skip
    model = TaskClassifier(EncoderForPretraining(cfg, nsp=False), {"t": 3}, "mean")
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01, layer_lr_decay=0.5)
    step_lr = lr_at(4, max_steps=100, base_lr=0.1, warmup_steps=10)
    assert step_lr == pytest.approx(0.05)
    set_lr(opt, step_lr)
    lrs = _group_lr(opt, model)
    assert len(lrs) == len(list(model.parameters()))  # every parameter in exactly one group
    for name, value in lrs.items():
        if ".blocks.1." in name:
            want = 0.05 * 0.5  # the top block: decay^(L - i) = 0.5^1
        elif ".blocks.0." in name:
            want = 0.05 * 0.25
        elif any(e in name for e in ("tok_emb", "pos_emb", "seg_emb", "emb_norm")):
            want = 0.05 * 0.125  # decay^(L + 1)
        else:  # the task head and the unused MLM head
            assert name.startswith(("heads.", "trunk.mlm_head.")), name
            want = 0.05
        assert value == pytest.approx(want), name
    for g in opt.param_groups:  # weight decay still skips norms and biases
        assert g["weight_decay"] == (0.01 if all(p.ndim >= 2 for p in g["params"]) else 0.0)


def test_layer_lr_decay_on_a_decoder_and_one_leaves_the_groups_as_they_were() -> None:
    from lmforge.training.optim import layer_lr_scales, set_lr

    model = _model(n_layer=3, tie_embeddings=False)
    scales = layer_lr_scales(model, 0.8)
    assert scales["tok_emb.weight"] == pytest.approx(0.8**4)
    assert scales["blocks.0.attn.q_proj.weight"] == pytest.approx(0.8**3)
    assert scales["blocks.2.mlp.up_proj.weight"] == pytest.approx(0.8)
    assert scales["lm_head.weight"] == scales["norm.weight"] == 1.0
    plain, same = param_groups(model, 0.1), param_groups(model, 0.1, layer_lr_decay=1.0)
    assert [list(map(id, g["params"])) for g in plain] == [list(map(id, g["params"])) for g in same]
    assert [set(g) for g in same] == [{"params", "weight_decay"}] * 2  # no lr_scale key
    opt = build_optimizer(model, lr=0.3, weight_decay=0.1, layer_lr_decay=1.0)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2]
    with pytest.raises(ValueError, match="layer_lr_decay"):
        build_optimizer(model, lr=0.1, weight_decay=0.0, layer_lr_decay=0.0)
    with pytest.raises(ValueError, match=r"blocks\.\{i\}"):
        build_optimizer(torch.nn.Linear(2, 2), lr=0.1, weight_decay=0.0, layer_lr_decay=0.9)


def test_fused_adamw_step_marks_weights_changed_for_a_live_engine():
    """An inference engine made before training must sample from the trained weights: the fused AdamW
    kernel writes weights without bumping their version counters, which the engine's fused-weight cache
    watches (before the fix a PPO/GRPO rollout engine kept sampling from the starting weights)."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.rows import SamplingParams

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32))
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate([[1, 2, 3]], params)[0].ids
    opt = build_optimizer(model, lr=0.5, weight_decay=0.0)
    versions = [p._version for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        logits = model(torch.tensor([[1, 2, 3]]))
        torch.nn.functional.cross_entropy(logits[0], torch.tensor([7, 7, 7])).backward()
        opt.step()
    assert all(p._version > v for p, v in zip(model.parameters(), versions))
    after = engine.generate([[1, 2, 3]], params)[0].ids
    assert after == Engine(model).generate([[1, 2, 3]], params)[0].ids  # the live engine = a fresh one
    assert after != before and 7 in after
