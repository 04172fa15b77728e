"""The export (hf, gguf) and import (hf) stages: manifests through the run store, parity recorded by the
stage itself, refusals before anything is written, the CLI, and an imported GPT-2 that generate and
finetune sft run on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lmforge.cli import main as cli_main
from lmforge.config import from_dict
from lmforge.errors import ConfigError

pytestmark = pytest.mark.slow  # importing transformers alone takes several seconds
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from lmforge.stages.export import gguf as export_gguf  # noqa: E402 (after the skips)
from lmforge.stages.export import hf as export_hf  # noqa: E402
from lmforge.stages.import_ import hf as import_hf  # noqa: E402

WORDS = "the cat sat on a mat and dog ran to park sun moon yes no".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def checkpoint(root: Path, **overrides) -> Path:
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    tok = train_bpe([" ".join(WORDS) * 4, " ".join(reversed(WORDS)) * 4] * 10, vocab_size=300)
    tok_path = save_tokenizer(tok, root / "tok")
    base = {"vocab_size": tok.get_vocab_size(), "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}
    cfg = ModelConfig(**{**base, **overrides})
    torch.manual_seed(0)
    return save_checkpoint(root / "ckpt", build_model(cfg), cfg, tokenizer_path=tok_path)


def test_export_hf_stage_writes_a_verified_llama_directory(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path)
    out = tmp_path / "run" / "export-hf"
    manifest = export_hf.main(from_dict(export_hf.Config, {"model": str(ckpt), "out": str(out)}))
    assert manifest["status"] == "complete" and manifest["stage"] == "export.hf"
    assert 0 <= manifest["metrics"]["max_logit_diff"] < 1e-4
    for name in ("config.json", "model.safetensors", "tokenizer.json", "manifest.json"):
        assert (out / name).is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    again = export_hf.main(from_dict(export_hf.Config, {"model": str(ckpt), "out": str(out)}))
    assert again["cached_last"]


def test_export_refusal_fails_before_the_stage_writes(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path, pos="learned", norm="layernorm")
    out = tmp_path / "run" / "export-hf"
    with pytest.raises(ConfigError, match="pos='learned'.*norm='layernorm'"):
        export_hf.main(from_dict(export_hf.Config, {"model": str(ckpt), "out": str(out)}))
    assert not out.exists() and not out.with_name("export-hf.partial").exists()
    from lmforge.model.checkpoint import save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.model.heads import EncoderForPretraining

    enc = ModelConfig(arch="encoder", vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "run" / "pretrain" / "ckpt" / "step_1", EncoderForPretraining(enc), enc)
    (tmp_path / "run" / "pretrain" / "ckpt" / "final.json").write_text('{"best": "step_1", "last": "step_1"}')
    with pytest.raises(ConfigError, match="post-norm"):  # an encoder, through a training stage directory
        export_gguf.main(from_dict(export_gguf.Config, {"model": "@pretrain", "out": str(out)}))


def test_export_gguf_stage(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path, tie_embeddings=False)
    out = tmp_path / "run" / "export-gguf"
    manifest = export_gguf.main(from_dict(export_gguf.Config, {"model": str(ckpt), "out": str(out)}))
    metrics = manifest["metrics"]
    assert metrics["tensors"] == 1 + 2 * 9 + 2 and metrics["max_tensor_diff"] == 0.0
    assert (out / "model.gguf").stat().st_size == metrics["bytes"]
    half = export_gguf.main(
        from_dict(
            export_gguf.Config, {"model": str(ckpt), "out": str(tmp_path / "run" / "f16"), "dtype": "f16"}
        )
    )
    assert 0 < half["metrics"]["max_tensor_diff"] < 1e-3  # f16 rounding of values ~0.02
    assert half["metrics"]["bytes"] < 0.6 * metrics["bytes"]


def test_import_gpt2_then_generate_and_finetune(tmp_path: Path, gpt2_hf_dir: Callable[..., Path]) -> None:
    from lmforge.model.checkpoint import load_model, resolve_checkpoint
    from lmforge.stages import generate
    from lmforge.stages.finetune import sft

    hf_dir = gpt2_hf_dir(
        tmp_path / "gpt2", [" ".join(WORDS) * 4] * 10, perturb=False, n_positions=64, n_head=2
    )
    out = tmp_path / "run" / "import"
    manifest = import_hf.main(from_dict(import_hf.Config, {"model": str(hf_dir), "out": str(out)}))
    metrics = manifest["metrics"]
    assert manifest["stage"] == "import.hf" and metrics["added_tokens"] == 7
    assert 0 <= metrics["max_logit_diff"] < 1e-4
    model, cfg = load_model(resolve_checkpoint(out))
    assert (cfg.mlp, cfg.pos, cfg.norm, cfg.vocab_size) == (
        "gelu_tanh",
        "learned",
        "layernorm",
        metrics["vocab_size"],
    )

    gen = generate.main(
        from_dict(
            generate.Config,
            {
                "model": "@import",
                "out": str(tmp_path / "run" / "generate"),
                "prompts": ["the cat"],
                "max_new_tokens": 5,
            },
        )
    )
    assert gen["metrics"]["samples"] == 1
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": f"{w} sat"}]}
        for w in WORDS
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tuned = sft.main(
        from_dict(
            sft.Config,
            {
                "model": "@import",
                "out": str(tmp_path / "run" / "sft"),
                "train": [str(data)],
                "max_steps": 2,
                "batch_size": 2,
                "warmup_steps": 1,
                "eval_every": 2,
            },
        )
    )
    assert tuned["status"] == "complete"


def test_import_llama_exported_by_lmforge_round_trips_exactly(tmp_path: Path) -> None:
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    ckpt = checkpoint(tmp_path, n_kv_head=1, tie_embeddings=False)
    run = tmp_path / "run"
    export_hf.main(from_dict(export_hf.Config, {"model": str(ckpt), "out": str(run / "hf")}))
    manifest = import_hf.main(
        from_dict(import_hf.Config, {"model": str(run / "hf"), "out": str(run / "back")})
    )
    assert manifest["metrics"]["added_tokens"] == 0
    original, cfg = load_model(ckpt)
    back, back_cfg = load_model(resolve_checkpoint(run / "back"))
    assert back_cfg.vocab_size == cfg.vocab_size and back_cfg.hidden_dim == cfg.hidden_dim
    for key, value in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert (resolve_checkpoint(run / "back") / "tokenizer.json").read_text() == (
        ckpt / "tokenizer.json"
    ).read_text()


def test_cli(tmp_path: Path, capsys) -> None:
    ckpt = checkpoint(tmp_path)
    assert cli_main(["export", "gguf", "--model", str(ckpt), "--out", str(tmp_path / "g"), "-q"]) == 0
    assert (tmp_path / "g" / "model.gguf").is_file()
    assert (
        cli_main(
            ["export", "hf", "--model", str(ckpt), "--out", str(tmp_path / "h"), "--verify", "false", "-q"]
        )
        == 0
    )
    assert cli_main(["export", "onnx"]) == 2
    assert "Methods: hf, gguf" in capsys.readouterr().err
    assert cli_main(["import", "hf", "--out", str(tmp_path / "i")]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli_main(["import", "hf", "--model", str(tmp_path / "h"), "--out", str(tmp_path / "i"), "-q"]) == 0
    bad = checkpoint(tmp_path / "b", mlp="gelu")
    assert cli_main(["export", "hf", "--model", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "mlp='gelu'" in capsys.readouterr().err


def test_recipe_runs_export_and_import_stages(tmp_path: Path) -> None:
    import yaml

    ckpt = checkpoint(tmp_path)
    recipe = {
        "stages": {
            "export-hf": {"stage": "export.hf", "model": str(ckpt)},
            "export-gguf": {"stage": "export.gguf", "model": str(ckpt), "dtype": "f16"},
            "import": {"stage": "import.hf", "model": "@export-hf"},
        }
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0
    for stage in ("export-hf", "export-gguf", "import"):
        manifest = json.loads((tmp_path / "run" / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
    assert (tmp_path / "run" / "import" / "ckpt" / "step_0" / "DONE").is_file()


def test_export_with_an_adapter_loads_in_one_call_with_auto_peft(tmp_path: Path) -> None:
    """adapter/ in the export names the export as its base: AutoPeftModelForCausalLM loads both and
    computes the lmforge LoRA model's logits."""
    peft = pytest.importorskip("peft")
    from lmforge.model.checkpoint import load_model
    from lmforge.model.lora import ADAPTER_CONFIG_FILE, LoraConfig, apply_lora, save_adapter

    ckpt = checkpoint(tmp_path)
    model, _ = load_model(ckpt)
    lora = LoraConfig(r=4, alpha=8.0)
    apply_lora(model, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: not the identity
    save_adapter(model, tmp_path / "lora" / "adapter", lora, base_model_name_or_path=str(ckpt))
    out = tmp_path / "run" / "export-hf"
    cfg = from_dict(
        export_hf.Config, {"model": str(ckpt), "adapter": str(tmp_path / "lora"), "out": str(out)}
    )
    manifest = export_hf.main(cfg)
    assert manifest["metrics"]["adapter_tensors"] == 2 * len(
        [n for n, _ in model.named_modules() if n.endswith(tuple(lora.targets))]
    )
    assert json.loads((out / "adapter" / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"] == str(
        out
    )
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter")).eval()
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=idx).logits, model.eval()(idx), rtol=0, atol=1e-4)
