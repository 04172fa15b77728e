"""lmforge import hf / export hf stages on the newer families: a Gemma directory imports through the
stage (and the CLI) with equal logits and exports back as Gemma; refused model types and configs fail
before the run store creates ``<out>.partial``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.cli import main as cli_main
from lmforge.config import from_dict
from lmforge.errors import ConfigError, InputError

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")

from lmforge.stages.export import hf as export_hf  # noqa: E402 (after the skip)
from lmforge.stages.import_ import hf as import_hf  # noqa: E402

TEXT = "the cat sat on a mat and the dog ran to the park " * 20
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 32,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def gemma_dir(root: Path) -> Path:
    """A tiny random Gemma (norm gains off zero, so a wrong fold shows) with an lmforge tokenizer."""
    from lmforge.tokenizer.train import train_bpe

    tok = train_bpe([TEXT] * 10, vocab_size=300)
    config = transformers.GemmaConfig(**SMALL, vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    model = transformers.GemmaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    return root


def test_gemma_imports_and_exports_through_the_stages(tmp_path: Path) -> None:
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    hf_dir = gemma_dir(tmp_path / "gemma")
    run = tmp_path / "run"
    assert cli_main(["import", "hf", "--model", str(hf_dir), "--out", str(run / "import"), "-q"]) == 0
    manifest = json.loads((run / "import" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["added_tokens"] == 0
    assert 0 <= manifest["metrics"]["max_logit_diff"] < 1e-4
    model, cfg = load_model(resolve_checkpoint(run / "import"))
    assert (cfg.mlp, cfg.scale_emb, cfg.n_kv_head) == ("geglu", True, 1)

    exported = export_hf.main(from_dict(export_hf.Config, {"model": "@import", "out": str(run / "export")}))
    assert exported["status"] == "complete" and 0 <= exported["metrics"]["max_logit_diff"] < 1e-4
    config = json.loads((run / "export" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("gemma", ["GemmaForCausalLM"])
    back = transformers.AutoModelForCausalLM.from_pretrained(run / "export", local_files_only=True).eval()
    original = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.eval()(idx)
        torch.testing.assert_close(back(input_ids=idx).logits, ours, rtol=0, atol=1e-4)
        torch.testing.assert_close(original(input_ids=idx).logits, ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("config", "error", "named"),
    [
        ({"model_type": "t5"}, InputError, "supported: llama, gpt2, qwen2, qwen3, mistral, gemma, bert"),
        (transformers.Gemma2Config(**SMALL, vocab_size=64), ConfigError, "attn_logit_softcapping=50.0"),
        (transformers.Qwen3Config(**{**SMALL, "head_dim": 16}, vocab_size=64), ConfigError, "head_dim 16"),
    ],
)
def test_refused_import_leaves_no_partial_directory(tmp_path: Path, config, error: type, named: str) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    if isinstance(config, dict):
        (hf_dir / "config.json").write_text(json.dumps(config))
    else:
        config.save_pretrained(hf_dir)
    out = tmp_path / "run" / "import"
    with pytest.raises(error) as err:
        import_hf.main(from_dict(import_hf.Config, {"model": str(hf_dir), "out": str(out)}))
    assert named in str(err.value)
    assert not out.exists() and not out.with_name("import.partial").exists()
