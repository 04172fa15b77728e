"""finetune lora refuses targets that match no linear layer of the base before any work: the message
names the key and the base's linear layers, and no stage directory (nor its ``.partial``) exists."""

from __future__ import annotations

from lmforge.cli import main


def test_unknown_lora_target_is_refused_before_the_stage_starts(ft_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    argv = ["finetune", "lora", "--model", str(ft_dir / "decoder"), "--train", str(ft_dir / "chat.jsonl")]
    assert main([*argv, "--out", str(out), "--targets", "[no_such_module]"]) == 2
    err = capsys.readouterr().err
    assert "targets: LoRA targets ['no_such_module'] match no nn.Linear" in err
    assert "q_proj" in err and "down_proj" in err  # the layers that exist
    assert not out.exists() and not out.with_name("lora.partial").exists()


def test_tied_lm_head_target_and_encoder_base_are_refused_early(ft_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    argv = ["finetune", "lora", "--train", str(ft_dir / "chat.jsonl"), "--out", str(out)]
    assert main([*argv, "--model", str(ft_dir / "decoder"), "--targets", "[lm_head]"]) == 2
    assert "targets: lm_head.weight is shared" in capsys.readouterr().err
    assert main([*argv, "--model", str(ft_dir / "encoder")]) == 2
    assert "model: LoRA SFT needs a decoder checkpoint" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("lora.partial").exists()
