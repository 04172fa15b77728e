"""Tests for lmforge.training.checkpoint: round trip, tying, completion markers, resume, pruning, RNG."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from lmforge.errors import InputError
from lmforge.model.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.training.checkpoint import load_train_state, prune_checkpoints, rng_state, set_rng_state
from lmforge.training.optim import build_optimizer

VOCAB = 32
CFG = ModelConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16)


def _model(cfg: ModelConfig = CFG) -> Decoder:
    torch.manual_seed(0)
    return Decoder(cfg)


def _train_step(model: Decoder, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, VOCAB, (2, 9), generator=g)
    loss = F.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()


def _save(root: Path, step: int, model: Decoder | None = None, **kw) -> Path:
    model = model if model is not None else _model()
    return save_checkpoint(checkpoint_dir(root, step), model, model.config, **kw)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_identical_logits(tmp_path: Path, tie: bool) -> None:
    cfg = dataclasses.replace(CFG, tie_embeddings=tie, pos="learned")
    model = _model(cfg)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    _train_step(model, opt, seed=0)  # move the weights away from their init
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"model": "stub"}')
    out = save_checkpoint(tmp_path / "ckpt" / "step_1", model, cfg, tokenizer_path=tokenizer)
    assert sorted(p.name for p in out.iterdir()) == [
        "DONE",
        "model.safetensors",
        "model_config.json",
        "tokenizer.json",
    ]
    assert json.loads((out / "model_config.json").read_text()) == cfg.to_dict()
    assert (out / "tokenizer.json").read_text() == tokenizer.read_text()
    assert not (tmp_path / "ckpt" / "step_1.tmp").exists()

    loaded, loaded_cfg = load_model(out)
    assert loaded_cfg == cfg
    idx = torch.randint(0, VOCAB, (2, 8))
    assert torch.equal(loaded(idx), model(idx))
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) is not tie  # a tied head is stored once
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) is tie
    if not tie:
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Train 2 steps, checkpoint, train 2 more; a resumed copy must land on the same weights."""
    model = _model()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    for s in range(2):
        _train_step(model, opt, seed=s)
    state = {
        "optimizer": opt.state_dict(),
        "step": 2,
        "rng": rng_state(),
        "loader": {"pos": 18, "order": [3, 1]},
    }
    out = _save(tmp_path, 2, model, train_state=state)
    noise = torch.rand(3)
    for s in range(2, 4):
        _train_step(model, opt, seed=s)

    resumed, _ = load_model(out)
    train_state = torch.load(out / "train_state.pt", weights_only=True)  # plain data only
    assert train_state["step"] == 2 and train_state["loader"] == {"pos": 18, "order": [3, 1]}
    train_state = load_train_state(out)
    resumed_opt = build_optimizer(resumed, lr=1e-2, weight_decay=0.1)
    resumed_opt.load_state_dict(train_state["optimizer"])
    set_rng_state(train_state["rng"])
    assert torch.equal(torch.rand(3), noise)
    for s in range(2, 4):
        _train_step(resumed, resumed_opt, seed=s)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_incomplete_checkpoints_are_ignored_and_refused(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    _save(tmp_path, 10, train_state={"step": 10})
    interrupted = shutil.copytree(checkpoint_dir(tmp_path, 10), checkpoint_dir(tmp_path, 20))
    (interrupted / "DONE").unlink()
    shutil.copytree(checkpoint_dir(tmp_path, 10), tmp_path / "step_30.tmp")  # even with DONE inside
    (tmp_path / "step_40").write_text("not a directory")
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)
    with pytest.raises(InputError, match="no DONE marker"):
        load_model(interrupted)
    with pytest.raises(InputError, match="no DONE marker"):
        load_train_state(interrupted)
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "step_99")
    with pytest.raises(InputError, match="no train_state.pt"):
        load_train_state(_save(tmp_path, 50))


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path: Path) -> None:
    first = _save(tmp_path, 5, train_state={"step": 1})
    model = _model()
    with torch.no_grad():
        model.norm.weight.fill_(3.0)
    _save(tmp_path, 5, model, train_state={"step": 2})
    assert load_train_state(first)["step"] == 2
    assert torch.all(load_model(first)[0].norm.weight == 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_5"]


def test_bad_saves_write_nothing(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"train_state\['loader'\]\['path'\] is a PosixPath"):
        _save(tmp_path, 1, model, train_state={"loader": {"path": tmp_path}})
    with pytest.raises(ValueError, match="differs from the model's config"):
        save_checkpoint(tmp_path / "step_1", model, dataclasses.replace(CFG, vocab_size=0))
    with pytest.raises(InputError, match="tokenizer file not found"):
        _save(tmp_path, 1, model, tokenizer_path=tmp_path / "nope.json")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_config_is_an_input_error(tmp_path: Path) -> None:
    out = _save(tmp_path, 1)
    (out / "model_config.json").write_text(json.dumps({**CFG.to_dict(), "n_embed": 3}))
    with pytest.raises(InputError, match="model_config.json: size mismatch"):
        load_model(out)  # an edit after saving no longer matches the completion marker
    (out / "DONE").write_text("complete\n")  # a marker from before checksums: the config itself is read
    with pytest.raises(InputError, match="n_embed"):
        load_model(out)


def test_prune_keeps_the_newest_and_the_kept(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40, 50):
        _save(tmp_path, step)
    (tmp_path / "step_60").mkdir()  # in progress / interrupted, no DONE: left alone
    (tmp_path / "step_70.tmp").mkdir()  # leftover of an interrupted save
    removed = prune_checkpoints(tmp_path, keep_last=2, keep={checkpoint_dir(tmp_path, 10)})
    assert sorted(p.name for p in removed) == ["step_20", "step_30", "step_70.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_40", "step_50", "step_60"]
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=-1)


def test_resolve_checkpoint(tmp_path: Path) -> None:
    stage = tmp_path / "pretrain"
    root = stage / "ckpt"
    for step in (10, 20):
        _save(root, step)
    assert resolve_checkpoint(checkpoint_dir(root, 10)) == checkpoint_dir(root, 10)
    assert resolve_checkpoint(stage, "best") == checkpoint_dir(root, 20)  # no final.json: latest
    (root / "final.json").write_text(json.dumps({"last": "step_20", "best": "step_10", "step": 20}))
    assert resolve_checkpoint(stage, "best") == checkpoint_dir(root, 10)
    assert resolve_checkpoint(root, "last") == checkpoint_dir(root, 20)
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="'best' or 'last'"):
        resolve_checkpoint(stage, "first")


def test_rng_state_round_trip() -> None:
    state = rng_state()
    assert isinstance(state["torch_cpu"], torch.Tensor)
    a = torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(5), a)
