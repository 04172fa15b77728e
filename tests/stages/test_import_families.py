"""lmforge import hf / export hf stages on the newer families: a Gemma directory imports through the
stage (and the CLI) with equal logits and exports back as Gemma; refused model types and configs fail
before the run store creates ``<out>.partial``."""

from __future__ import annotations

import json
from collections.abc import Callable
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


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def test_gemma_imports_and_exports_through_the_stages(
    tmp_path: Path, hf_family_dir: Callable[..., Path], tiny_tokenizer_json: Path
) -> None:
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    hf_dir = hf_family_dir(tmp_path / "gemma", "Gemma", tiny_tokenizer_json, num_key_value_heads=1)
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
        (("Gemma2", {}), ConfigError, "attn_logit_softcapping=50.0"),
        (("Qwen3", {"head_dim": 16}), ConfigError, "head_dim 16"),
    ],
)
def test_refused_import_leaves_no_partial_directory(
    tmp_path: Path, hf_tiny_config: dict, config, error: type, named: str
) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    if isinstance(config, dict):
        (hf_dir / "config.json").write_text(json.dumps(config))
    else:  # (family, overrides) of a tiny config with one key-value head
        family, overrides = config
        small = {**hf_tiny_config, "num_key_value_heads": 1, **overrides}
        getattr(transformers, f"{family}Config")(**small, vocab_size=64).save_pretrained(hf_dir)
    out = tmp_path / "run" / "import"
    with pytest.raises(error) as err:
        import_hf.main(from_dict(import_hf.Config, {"model": str(hf_dir), "out": str(out)}))
    assert named in str(err.value)
    assert not out.exists() and not out.with_name("import.partial").exists()
