"""Shared test fixtures.

``one_torch_thread``: run a test with torch on one thread. The models in unit tests are tiny, so one
thread is as fast as several and immune to oversubscription when the machine is busy; the previous
thread count is restored afterwards. The model and training packages use it for every test.

Tiny Hugging Face models built in-process (never downloaded), for ``tests/interop`` and the import and
export stage tests: ``hf_tiny_config`` (the config keys every family takes), ``tiny_tokenizer_json``
(an lmforge tokenizer), ``hf_family_dir`` (a ``<Family>ForCausalLM`` directory) and ``gpt2_hf_dir`` (a
GPT-2 directory with a GPT-2-style tokenizer, ``gpt2_tokenizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page() -> Iterator[object]:
    """A Playwright page in headless Debian Chromium (``/usr/bin/chromium``); no browser download.

    Skips with a reason where Chromium or Playwright is missing (a user's machine), but fails under
    ``CI=true``, where ``.ci/run`` installs Chromium: a browser test must never silently skip in CI.
    """
    import os
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is not installed (make test installs the dev extra)")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def bwrap_sandbox() -> None:
    """Skips where bubblewrap cannot run the code sandbox (a user's machine), with the probe's reason, but
    fails under ``CI=true``, where ``.ci/run`` installs bubblewrap: the escape tests must never silently
    skip in CI."""
    import os

    from lmforge.eval.sandbox import sandbox_problem

    problem = sandbox_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"no usable bubblewrap under CI=true: {problem} (.ci/run installs Debian's bubblewrap)")
    if problem:
        pytest.skip(f"no usable bubblewrap: {problem} (apt-get install -y bubblewrap)")


HF_TEXT = "the cat sat on a mat and the dog ran to the park " * 20
HF_TINY = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 32,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}


def _perturb(model: Any) -> Any:
    """Move norm gains and biases off their init values, so a swapped or dropped key (or a gain folded
    the wrong way) would show in the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def hf_tiny_config() -> dict[str, Any]:
    """A copy of ``HF_TINY``: the config keys of a tiny model of any decoder family (no ``vocab_size``)."""
    return dict(HF_TINY)


@pytest.fixture(scope="module")
def tiny_tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An lmforge tokenizer (it has every lmforge token, so import adds none and ids line up)."""
    from lmforge.tokenizer.train import train_bpe

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe([HF_TEXT] * 10, vocab_size=300).save(str(path))
    return path


@pytest.fixture
def hf_family_dir() -> Callable[..., Path]:
    """``make(root, family, tokenizer_json, **overrides)``: a ``<Family>ForCausalLM`` directory (``HF_TINY``
    with ``overrides``, seed 0, gains and biases perturbed) holding a copy of ``tokenizer_json``."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    def make(root: Path, family: str, tokenizer_json: Path, **overrides: Any) -> Path:
        vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
        config = getattr(transformers, f"{family}Config")(**{**HF_TINY, "vocab_size": vocab, **overrides})
        torch.manual_seed(0)
        _perturb(getattr(transformers, f"{family}ForCausalLM")(config)).save_pretrained(root)
        (root / "tokenizer.json").write_text(tokenizer_json.read_text())
        return root

    return make


@pytest.fixture
def gpt2_tokenizer() -> Callable[[list[str]], Any]:
    """``make(texts)``: a byte-level BPE (300 tokens) with only ``<|endoftext|>``, as GPT-2's (no lmforge
    tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def make(texts: list[str]) -> Any:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return tok

    return make


@pytest.fixture
def gpt2_hf_dir(gpt2_tokenizer: Callable[[list[str]], Any]) -> Callable[..., Path]:
    """``make(root, texts=[HF_TEXT] * 10, *, perturb=True, slow_files=True, **overrides)``: a GPT-2
    directory (2 layers, 32 wide, seed 0; ``overrides`` on the config) with its tokenizer trained on
    ``texts``, as ``vocab.json`` + ``merges.txt`` (``slow_files``) or ``tokenizer.json``."""
    import torch
    import transformers

    def make(
        root: Path,
        texts: list[str] | None = None,
        *,
        perturb: bool = True,
        slow_files: bool = True,
        **overrides: Any,
    ) -> Path:
        tok = gpt2_tokenizer(texts or [HF_TEXT] * 10)
        eot = tok.token_to_id("<|endoftext|>")
        base = {
            "vocab_size": tok.get_vocab_size(),
            "n_positions": 32,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
        }
        config = transformers.GPT2Config(**{**base, "bos_token_id": eot, "eos_token_id": eot, **overrides})
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        (_perturb(model) if perturb else model).save_pretrained(root)
        if slow_files:
            tok.model.save(str(root))  # vocab.json + merges.txt, GPT-2's original tokenizer files
        else:
            tok.save(str(root / "tokenizer.json"))
        return root

    return make
