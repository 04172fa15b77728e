"""Typed configs: coercion, unknown keys with the nearest valid key, validation, overrides, help rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from lmforge.config import ConfigError, describe, from_dict, hash_view, merge, opt, parse_overrides


@dataclass
class Inner:
    n_embd: int = opt(64, "width")
    n_head: int = opt(4, "heads")

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError("n_embd", f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


@dataclass
class Outer:
    lr: float = opt(1e-3, "learning rate")
    steps: int = opt(10, "steps")
    name: str = opt("x", "a name")
    flag: bool = opt(False, "a flag")
    tags: list[str] = opt([], "tags")
    sched: Literal["cosine", "linear"] = opt("cosine", "schedule")
    model: Inner = opt(Inner(), "the model")
    out: str = opt("", "where", path=True)
    workers: int = opt(2, "how many", cache=False)
    maybe: int | None = opt(None, "optional")


def test_defaults_and_coercion():
    cfg = from_dict(Outer, {"lr": "3e-4", "steps": "100", "flag": "true", "tags": "one", "maybe": 3})
    assert cfg.lr == pytest.approx(3e-4) and cfg.steps == 100 and cfg.flag is True
    assert cfg.tags == ["one"] and cfg.maybe == 3 and cfg.model.n_embd == 64


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"stpes": 3})
    assert e.value.key == "stpes" and "did you mean 'steps'" in str(e.value)


def test_unknown_nested_key_has_dotted_path():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"model": {"n_embed": 32}}, prefix="pretrain")
    assert e.value.key == "pretrain.model.n_embed" and "'n_embd'" in str(e.value)


@pytest.mark.parametrize(
    "data,key",
    [
        ({"steps": "ten"}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"lr": True}, "lr"),
        ({"flag": "maybe"}, "flag"),
        ({"sched": "cosin"}, "sched"),
        ({"model": 3}, "model"),
        ({"tags": [1, {"a": 1}]}, "tags[1]"),
    ],
)
def test_wrong_types_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert e.value.key == key


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf", "-Infinity"])
def test_non_finite_floats_are_refused(value):
    """YAML's .nan / .inf (floats) and the same typed as text: every float option must be finite."""
    with pytest.raises(ConfigError, match="must be a finite number") as e:
        from_dict(Outer, {"lr": value})
    assert e.value.key == "lr"


def test_non_finite_option_fails_on_the_command_line_before_any_work(tmp_path, capsys):
    from lmforge.cli import main

    out = tmp_path / "pretrain"
    assert main(["pretrain", "--out", str(out), "--lr", ".nan"]) == 2
    assert "lr: must be a finite number" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(out), "lr=.inf"]) == 2
    assert not out.exists() and not out.with_name("pretrain.partial").exists()


def test_impossible_value_fails_with_key():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"model": {"n_embd": 100, "n_head": 3}}, prefix="pretrain")
    assert e.value.key == "pretrain.model.n_embd"
    assert "divisible" in str(e.value)


def test_literal_suggests():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        from_dict(Outer, {"sched": "cosin"})


def test_parse_overrides_forms():
    got = parse_overrides(["a.b=1", "--a.c", "x", "--flag", "--lr=3e-4", "--list", "[1, 2]"])
    assert got == {"a": {"b": 1, "c": "x"}, "flag": True, "lr": "3e-4", "list": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["bare"])


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    out = merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}, "d": 1} and base["a"]["b"] == 1


def test_hash_view_drops_paths():
    cfg = from_dict(Outer, {"out": "/somewhere"})
    assert (
        "out" not in hash_view(cfg)
        and "workers" not in hash_view(cfg)
        and hash_view(cfg)["model"] == {"n_embd": 64, "n_head": 4}
    )


def test_describe_lists_every_option():
    rows = {r[0]: r for r in describe(Outer)}
    assert set(rows) >= {"lr", "steps", "model.n_embd", "model.n_head", "sched", "out"}
    assert rows["sched"][1] == "cosine|linear" and rows["model.n_embd"][2] == "64"
    assert all(r[3] for r in rows.values())


def test_hyphens_in_option_names_but_not_in_recipe_instances() -> None:
    from lmforge.config import parse_overrides

    assert parse_overrides(["--max-steps", "3"]) == {"max_steps": 3}
    assert parse_overrides(["eval-lora.max-tokens=64", "--eval-lora.model.n-layer=2"], instances=True) == {
        "eval-lora": {"max_tokens": 64, "model": {"n_layer": 2}}
    }


def test_a_hyphenated_instance_takes_overrides(tmp_path) -> None:
    from lmforge.stages.run import plan

    recipe = {"stages": {"eval-lora": {"stage": "eval", "model": "some/ckpt", "tokenizer": "some/tok"}}}
    (step,) = plan(recipe, {"eval-lora": {"max_tokens": 64}}, tmp_path)
    assert step.instance == "eval-lora" and step.config.max_tokens == 64


def test_a_renamed_option_keeps_working_for_a_release_with_a_warning(caplog):
    """pretrain's early_stop_patience / early_stop_min_delta are fine-tuning's patience / min_delta now."""
    from lmforge.stages.pretrain import Config

    cfg = from_dict(Config, {"early_stop_patience": 3, "early_stop_min_delta": 0.01}, prefix="pretrain")
    assert (cfg.patience, cfg.min_delta) == (3, 0.01)
    assert (
        "pretrain.early_stop_patience is deprecated" in caplog.text and "use pretrain.patience" in caplog.text
    )
    with pytest.raises(ConfigError, match="keep 'patience' only") as err:
        from_dict(Config, {"early_stop_patience": 3, "patience": 2}, prefix="pretrain")
    assert err.value.key == "pretrain.early_stop_patience"
    assert "early_stop_patience" not in {row[0] for row in describe(Config)}  # --help shows the new name


def test_range_checks_name_the_first_field_out_of_range() -> None:
    from types import SimpleNamespace

    from lmforge.config import above, at_least

    cfg = SimpleNamespace(a=0.5, b=0, c=float("nan"), d=-1)
    above(cfg, 0, "a")
    at_least(cfg, 0, "b")
    with pytest.raises(ConfigError, match=r"^b: must be > 0, got 0$"):
        above(cfg, 0, "a", "b", "d")  # the first one out of range
    with pytest.raises(ConfigError, match=r"^c: must be > 0, got nan$"):
        above(cfg, 0, "c")  # NaN is not above anything
    with pytest.raises(ConfigError, match=r"^d: must be >= 0, got -1$"):
        at_least(cfg, 0, "b", "d")
