"""A poisoned ``pytorch_model.bin`` (a pickle calling os.system) given to ``lmforge import hf`` ends in one
clear error naming the file as refused, never runs, leaves no finished stage directory and prints no
traceback; the BERT reader refuses it the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


class Evil:
    """Unpickling it would call os.system; weights_only loading must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _poisoned(model: torch.nn.Module, root: Path, marker: Path) -> Path:
    """``root`` holding the model's config, tokenizer-free, and its weights as a poisoned pickle."""
    model.config.save_pretrained(root)
    torch.save({**model.state_dict(), "evil": Evil(marker)}, root / "pytorch_model.bin")
    return root


def test_poisoned_decoder_weights_end_in_one_clear_cli_error(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    marker = tmp_path / "ran"
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    hf_dir = _poisoned(transformers.GPT2LMHeadModel(config), tmp_path / "hf", marker)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0")).save(
        str(hf_dir / "tokenizer.json")
    )
    out = tmp_path / "run" / "import"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "lmforge", "import", "hf", f"--model={hf_dir}", f"--out={out}", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    assert f"{hf_dir / 'pytorch_model.bin'}: refused" in errors[0]
    assert "GLOBAL posix.system" in errors[0] and "safetensors" in errors[0]
    assert not marker.exists()
    assert not out.exists()


def test_poisoned_encoder_weights_are_refused(tmp_path: Path) -> None:
    from lmforge.errors import UnsafePickleError
    from lmforge.interop import hf_bert

    marker = tmp_path / "ran"
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    hf_dir = _poisoned(transformers.BertModel(config), tmp_path / "bert", marker)
    with pytest.raises(UnsafePickleError, match=r"pytorch_model.bin: refused: .*beyond tensors"):
        hf_bert.read_bert_model(hf_dir)
    assert not marker.exists()
