"""Fixtures for the API server tests: a tiny random-weight decoder checkpoint (and an encoder one) with a
real BPE tokenizer, built once per session, and apps over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory) -> Path:
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok"))


def _checkpoint(root: Path, tok_path: Path, **overrides) -> Path:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import load_tokenizer

    vocab = load_tokenizer(tok_path).get_vocab_size()
    torch.manual_seed(0)
    base = {"vocab_size": vocab, "block_size": 128, "n_layer": 2, "n_head": 2, "n_embd": 32}
    mcfg = ModelConfig(**{**base, **overrides})
    model = build_model(mcfg)
    if mcfg.arch == "decoder":
        with torch.no_grad():  # wide weights: varied text (the 0.02 init repeats one token)
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
            if not mcfg.tie_embeddings:  # stop tokens get logit 0, never the greedy pick: runs to max_tokens
                from lmforge.inference.rows import default_stop_ids

                model.lm_head.weight[sorted(default_stop_ids(load_tokenizer(tok_path)))] = 0
    return save_checkpoint(root / "ckpt" / "step_1", model, mcfg, tokenizer_path=tok_path)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, tok_path: Path) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("tiny-lm"), tok_path)


@pytest.fixture(scope="session")
def encoder_ckpt(tmp_path_factory, tok_path: Path) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("tiny-enc"), tok_path, arch="encoder")


@pytest.fixture(scope="session")
def long_ckpt(tmp_path_factory, tok_path: Path) -> Path:
    """A decoder with a 2048-token context whose greedy generation never stops early, so one request
    runs long enough to be cut short."""
    return _checkpoint(tmp_path_factory.mktemp("long"), tok_path, block_size=2048, tie_embeddings=False)


@pytest.fixture
def make_app(ckpt: Path) -> Iterator:
    """``make_app(**settings)`` → an app over the tiny decoder; every scheduler is stopped afterwards."""
    from lmforge.serve.app import ServeSettings, create_app, load_served_model

    apps = []

    def make(path: Path | None = None, **settings):
        app = create_app(load_served_model(path or ckpt), ServeSettings(name="tiny", **settings))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.scheduler.stop()


@pytest.fixture
def client(make_app):
    from starlette.testclient import TestClient

    with TestClient(make_app()) as c:
        yield c
