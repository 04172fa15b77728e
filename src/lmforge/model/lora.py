"""LoRA: low-rank adapters on chosen linear layers, merge/unmerge, switching off, PEFT-format files.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes a pretrained
weight ``W`` ``[out, in]`` and learns a low-rank update: ``y = x W^T + b + (dropout(x) A^T B^T) * alpha / r``
with ``A`` ``[r, in]`` and ``B`` ``[out, r]``. As in the paper, ``B`` starts at zero (so a fresh adapter
leaves the model unchanged) and ``A`` at random; as in PEFT (and Linear's own default), ``A`` is
Kaiming-uniform with ``a = sqrt(5)``. Dropout applies to the input of ``A`` only (PEFT's placement).

- ``LoraConfig``: rank, alpha, dropout and which linear layers to wrap (``targets``).
- ``apply_lora(model, cfg)``: wrap every matching ``nn.Linear`` in a ``LoRALinear`` in place and freeze
  everything else; ``lora_parameters(model)`` are then the only trainable tensors.
- ``merge_lora`` / ``unmerge_lora``: fold ``W += B A * alpha / r`` into the base weight for inference,
  and take it out again; ``disable_lora(model)``: a context in which the adapters are off, so the same
  model serves as the frozen reference model (alignment, torchtune's pattern).
- ``save_adapter`` / ``load_adapter``: ``adapter_model.safetensors`` + ``adapter_config.json`` in the
  layout of Hugging Face PEFT, with tensors named as PEFT names them on ``LlamaForCausalLM``
  (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``, names from ``hf_names``), so
  ``peft.PeftModel.from_pretrained(LlamaForCausalLM(to_llama_config(cfg)), dir)`` loads our adapters.
  Models whose linear layers have no Llama name (e.g. an encoder with heads) keep lmforge's module names
  in the same layout; ``load_adapter`` reads both.
- ``merged_state_dict(model)``: the plain state dict (keys of the unwrapped model) with the adapters
  folded in, for export or to save a fine-tuned model as an ordinary checkpoint.

Departure from PEFT: one adapter per layer (no named adapters), no LoRA on embeddings, and no rsLoRA,
DoRA or per-layer rank patterns (``load_adapter`` rejects files that use them).

Shape notation: B batch, T tokens, I in_features, O out_features, R rank.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import ConfigError, InputError
from lmforge.model.config import LORA_TARGETS
from lmforge.model.hf_names import to_hf_key
from lmforge.runstore import read_json

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
DEFAULT_TARGETS = LORA_TARGETS
_REGEX_CHARS = set(".^$*+?{}[]|()\\")
_PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight")


@dataclass
class LoraConfig:
    """Which linear layers get an adapter, and its rank, scale and dropout (Hu et al. 2021).

    A target without regex characters (``.^$*+?{}[]|()\\``) matches a linear layer whose module name
    ends in that component (``"q_proj"`` matches ``blocks.3.attn.q_proj``). A target with any of them is a
    regular expression matched against the whole dotted module name (``r"blocks\\.[0-3]\\.attn\\..*"``).
    """

    r: int = field(default=8, metadata={"help": "adapter rank (>= 1)"})
    alpha: float = field(
        default=16.0, metadata={"help": "update scale numerator: B A is scaled by alpha / r"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    targets: tuple[str, ...] = field(
        default=DEFAULT_TARGETS,
        metadata={
            "help": "linear layers to adapt: last name component (q_proj) or full-name regex (blocks\\.0\\..*)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        elif isinstance(self.targets, list):
            self.targets = tuple(self.targets)

    @property
    def scaling(self) -> float:
        """The factor on ``B A``: alpha / r."""
        return self.alpha / self.r

    def validate(self) -> None:
        """Raise ``ConfigError(key, message)`` for the first impossible value."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError("r", f"must be an integer >= 1, got {self.r!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not (math.isfinite(self.alpha) and self.alpha > 0)
        ):
            raise ConfigError("alpha", f"must be a finite number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError("targets", f"must be a non-empty list of non-empty names, got {self.targets!r}")
        for target in self.targets:
            if is_regex(target):
                try:
                    re.compile(target)
                except re.error as e:
                    raise ConfigError("targets", f"{target!r} is not a valid regular expression: {e}") from e

    def matches(self, name: str) -> bool:
        """Whether the module called ``name`` (dotted, as ``named_modules`` gives it) is a target."""
        return any(
            re.fullmatch(t, name) if is_regex(t) else name.rsplit(".", 1)[-1] == t for t in self.targets
        )


def is_regex(target: str) -> bool:
    """A target with any regex character (``.`` included) is a full-name regex, else a last component."""
    return any(c in _REGEX_CHARS for c in target)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (module docstring).

    ``base`` keeps the wrapped layer (its ``weight`` and ``bias`` are frozen here); ``lora_A`` ``[R, I]``
    (Kaiming-uniform, a = sqrt(5)) and ``lora_B`` ``[O, R]`` (zeros) are the adapter; ``scaling`` is
    alpha / r. ``merged``: the update is folded into ``base.weight`` (forward is then the base layer
    alone). ``enabled``: False switches the adapter off (merged or not, the output is then the base
    layer's). ``weight``, ``bias``, ``in_features`` and ``out_features`` read through to ``base``.

    Args:
        base: the layer to adapt.
        r: rank (>= 1).
        alpha: scale numerator (> 0).
        dropout: dropout probability on the adapter's input, in [0, 1).

    Raises:
        TypeError: ``base`` is not an ``nn.Linear``.
        ConfigError: an impossible ``r``, ``alpha`` or ``dropout``.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        LoraConfig(r=r, alpha=alpha, dropout=dropout).validate()
        self.base = base
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))  # [R, I]
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **like))  # [O, R]
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.enabled = True
        for p in base.parameters():
            p.requires_grad_(False)
        self.reset_lora_parameters()
        self.train(base.training)  # a model in eval mode stays in eval mode (no adapter dropout)

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """``lora_A``: Kaiming-uniform with a = sqrt(5) (PEFT's, and ``nn.Linear``'s, init); ``lora_B``: zeros."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight ``[O, I]`` (including the update while merged)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias ``[O]`` or None."""
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update ``B A * scaling`` ``[O, I]``, computed in fp32, in the base weight's dtype."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # [O, I]
        return delta.to(self.base.weight.dtype)

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's output ``[..., O]`` for ``x`` ``[..., I]``."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # [..., R] then [..., O]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., I]`` to ``[..., O]``: the base layer plus, when enabled and not merged, the update."""
        y = self.base(x)
        if self.merged and not self.enabled:
            return y - self._update(x)  # switched off while folded in: take the update back out
        if self.merged or not self.enabled:
            return y
        return y + self._update(self.lora_dropout(x))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight`` (no-op when merged). Exact for inference only when the
        dropout is off (eval mode or ``dropout=0``); train with the adapter unmerged."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``base.weight`` (no-op when not merged); equal up to rounding."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}, enabled={self.enabled}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model`` by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _linear_names(model: nn.Module) -> list[str]:
    """Names of the model's linear layers as the unwrapped model has them (a ``LoRALinear`` counts once)."""
    wrapped = lora_modules(model)
    names = []
    for name, m in model.named_modules():
        if name in wrapped or (isinstance(m, nn.Linear) and name.rpartition(".")[0] not in wrapped):
            names.append(name)
    return names


def _describe_linears(names: list[str]) -> str:
    """A short description of a model's linear layers for error messages."""
    components = sorted({n.rsplit(".", 1)[-1] for n in names})
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return f"last components {components}; modules: {shown or 'none'}"


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap every ``nn.Linear`` that ``cfg.targets`` match in a ``LoRALinear``, in place; freeze the rest.

    Afterwards exactly ``lora_parameters(model)`` require gradients (every other parameter is frozen).

    Returns:
        The names of the wrapped modules, in module order.

    Raises:
        ConfigError: an invalid ``cfg``.
        ValueError: the model already has LoRA layers; no linear layer matches (the message names the
            targets and the model's linear layers); or a matched layer's weight is shared with another
            module (e.g. a tied ``lm_head``), where an update would change both.
    """
    cfg.validate()
    if lora_modules(model):
        raise ValueError(f"model already has LoRA layers ({', '.join(lora_modules(model))}); apply LoRA once")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if cfg.matches(n)]
    if not chosen:
        raise ValueError(
            f"LoRA targets {list(cfg.targets)} match no nn.Linear in the model; {_describe_linears(linears)}"
        )
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name in chosen:
        shared = owners[id(model.get_submodule(name).weight)]
        if len(shared) > 1:
            raise ValueError(
                f"{name}.weight is shared with {[s for s in shared if s != name + '.weight']} (tied "
                f"weights); a LoRA update would change both, so leave {name} out of the targets"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, cfg.dropout))
    return chosen


def lora_policy(model: nn.Module, r: int, alpha: float) -> LoraConfig | None:
    """The trained part of a policy (``align dpo``, ``ppo``, ``grpo``: their ``lora_r`` and ``lora_alpha``):
    the whole model when ``r`` is 0, else LoRA adapters of rank ``r`` on the default targets, applied to
    ``model`` in place (``apply_lora``, the rest frozen). Returns the adapters' config, or None."""
    if not r:
        return None
    lora = LoraConfig(r=r, alpha=alpha)
    apply_lora(model, lora)
    return lora


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter tensors (``lora_A``, ``lora_B`` of each ``LoRALinear``), in module order."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def _require_lora(model: nn.Module, what: str) -> dict[str, LoRALinear]:
    modules = lora_modules(model)
    if not modules:
        raise ValueError(f"{what}: the model has no LoRA layers (call apply_lora or load_adapter first)")
    return modules


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (``LoRALinear.merge``); idempotent."""
    for m in _require_lora(model, "merge_lora").values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every adapter back out of its base weight (``LoRALinear.unmerge``); idempotent."""
    for m in _require_lora(model, "unmerge_lora").values():
        m.unmerge()


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every adapter is off, so ``model`` computes the frozen base model; yields it.

    With unmerged adapters (the training state) the outputs are exactly the base model's; with merged
    ones the update is subtracted again (equal up to rounding). The previous ``enabled`` flags are
    restored on exit, also after an exception.

    Raises:
        ValueError: the model has no LoRA layers (a reference model would silently be the tuned one).
    """
    modules = _require_lora(model, "disable_lora")
    before = {name: m.enabled for name, m in modules.items()}
    try:
        for m in modules.values():
            m.enabled = False
        yield model
    finally:
        for name, m in modules.items():
            m.enabled = before[name]


def _file_module_names(model: nn.Module) -> dict[str, str]:
    """Our linear-layer name → its module name in adapter files.

    The Hugging Face Llama name (``model.layers.0.self_attn.q_proj``) when every linear layer of the
    model has one (a ``Decoder``), else our own names for all of them: one rule per model, so a file
    always maps back unambiguously onto the same kind of model.
    """
    names = _linear_names(model)
    try:
        return {name: to_hf_key(name + ".weight").removesuffix(".weight") for name in names}
    except ValueError:
        return {name: name for name in names}


def save_adapter(
    model: nn.Module, dir: Path | str, cfg: LoraConfig, *, base_model_name_or_path: str = ""
) -> Path:
    """Write the model's adapters as ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT layout).

    Tensors are ``base_model.model.<module>.lora_A.weight`` ``[R, I]`` and ``...lora_B.weight`` ``[O, R]``
    (the unmerged adapter; a merged model saves the same tensors), ``<module>`` the Hugging Face Llama
    name for a decoder. ``target_modules`` is ``cfg.targets`` (those that matched) when they are all plain
    names, else the sorted file names of the wrapped modules. Files are written via temporary
    names and renamed into place; ``dir`` is created if needed.

    Returns:
        ``dir`` as a Path.

    Raises:
        ValueError: the model has no LoRA layers, or their rank / alpha differ from ``cfg``.
    """
    modules = _require_lora(model, "save_adapter")
    for name, m in modules.items():
        if (m.r, m.alpha) != (cfg.r, float(cfg.alpha)):
            raise ValueError(f"{name} has r={m.r}, alpha={m.alpha} but cfg says r={cfg.r}, alpha={cfg.alpha}")
    file_names = _file_module_names(model)
    tensors = {}
    for name, m in modules.items():
        prefix = _PEFT_PREFIX + file_names[name]
        tensors[f"{prefix}.lora_A.weight"] = m.lora_A.detach().to("cpu").contiguous()
        tensors[f"{prefix}.lora_B.weight"] = m.lora_B.detach().to("cpu").contiguous()
    if any(is_regex(t) for t in cfg.targets):
        target_modules = sorted(file_names[name] for name in modules)
    else:
        used = {name.rsplit(".", 1)[-1] for name in modules}
        target_modules = [t for t in dict.fromkeys(cfg.targets) if t in used]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "revision": None,
    }
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dir / (ADAPTER_WEIGHTS_FILE + ".tmp")), metadata={"format": "pt"})
    (dir / (ADAPTER_CONFIG_FILE + ".tmp")).write_text(json.dumps(config, indent=2) + "\n")
    os.replace(dir / (ADAPTER_WEIGHTS_FILE + ".tmp"), dir / ADAPTER_WEIGHTS_FILE)
    os.replace(dir / (ADAPTER_CONFIG_FILE + ".tmp"), dir / ADAPTER_CONFIG_FILE)
    return dir


def _read_adapter_config(path: Path) -> tuple[LoraConfig, dict]:
    """The r / alpha / dropout of a PEFT ``adapter_config.json`` (targets left default) and the raw JSON;
    rejects options lmforge does not implement."""
    if not path.is_file():
        raise InputError(f"adapter config not found: {path}")
    raw = read_json(path, "adapter config")
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        peft_type = raw.get("peft_type") if isinstance(raw, dict) else None
        raise InputError(f"{path}: peft_type is {peft_type!r}; only 'LORA' adapters can be loaded")
    unsupported = {
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "layers_to_transform": None,
        "lora_bias": False,
    }
    for key, plain in unsupported.items():
        value = raw.get(key)
        if value != plain and value not in (None, False, [], {}):
            raise InputError(f"{path}: {key}={value!r} is not supported; lmforge loads {key}={plain!r}")
    try:
        cfg = LoraConfig(
            r=raw["r"], alpha=float(raw["lora_alpha"]), dropout=float(raw.get("lora_dropout", 0))
        )
        cfg.validate()
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: invalid LoRA settings: {e}") from e
    return cfg, raw


def load_adapter(model: nn.Module, dir: Path | str) -> LoraConfig:
    """Apply the adapters saved in ``dir`` (by ``save_adapter`` or by PEFT) to ``model`` and load them.

    The layers to wrap are those with tensors in the file. The returned config's ``targets`` are the
    file's ``target_modules`` when those are plain names that select exactly these layers, otherwise
    the layers' full names as escaped regexes. Nothing in the model changes unless loading succeeds.

    Raises:
        InputError: a missing or unreadable file, an unsupported PEFT option, a tensor for a layer the
            model does not have, a missing ``lora_A``/``lora_B`` half, or a shape that does not fit.
        ValueError: the model already has LoRA layers.
    """
    dir = Path(dir)
    if lora_modules(model):
        raise ValueError(
            f"model already has LoRA layers ({', '.join(lora_modules(model))}); load onto a plain model"
        )
    cfg, raw = _read_adapter_config(dir / ADAPTER_CONFIG_FILE)
    weights_path = dir / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file():
        raise InputError(f"adapter weights not found: {weights_path}")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (OSError, SafetensorError) as e:
        raise InputError(f"cannot read adapter weights {weights_path}: {e}") from e

    ours = {file_name: name for name, file_name in _file_module_names(model).items()}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise InputError(f"{weights_path}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        module = match["module"]
        if module not in ours:
            raise InputError(
                f"{weights_path}: adapter for {module!r}, which this model does not have; "
                f"{_describe_linears(sorted(ours))}"
            )
        halves.setdefault(ours[module], {})[match["which"]] = value
    if not halves:
        raise InputError(f"{weights_path} holds no LoRA tensors")
    halves = {name: halves[name] for name in ours.values() if name in halves}  # model order
    for name, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise InputError(f"{weights_path}: {name} has lora_{''.join(pair)} but not both A and B")
        linear = model.get_submodule(name)
        want = {"A": (cfg.r, linear.in_features), "B": (linear.out_features, cfg.r)}
        for which, shape in want.items():
            if tuple(pair[which].shape) != shape:
                raise InputError(
                    f"{weights_path}: {name} lora_{which} has shape {tuple(pair[which].shape)}, "
                    f"expected {shape} (r={cfg.r}, layer {linear.in_features}->{linear.out_features})"
                )

    wanted = set(halves)
    listed = raw.get("target_modules")
    plain = (
        isinstance(listed, list) and listed and all(isinstance(t, str) and not is_regex(t) for t in listed)
    )
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if plain and {n for n in linears if LoraConfig(targets=tuple(listed)).matches(n)} == wanted:
        targets = tuple(listed)
    else:
        targets = tuple(re.escape(name) for name in linears if name in wanted)
    cfg = LoraConfig(r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=targets)
    apply_lora(model, cfg)
    modules = lora_modules(model)
    with torch.no_grad():
        for name, pair in halves.items():
            modules[name].lora_A.copy_(pair["A"])
            modules[name].lora_B.copy_(pair["B"])
    return cfg


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without LoRA: keys as the unwrapped model has them, adapters folded in.

    ``<m>.base.weight`` becomes ``<m>.weight`` plus ``B A * scaling`` (already included when merged),
    ``<m>.base.bias`` becomes ``<m>.bias``, and ``lora_A``/``lora_B`` are dropped; the ``enabled`` flags
    are ignored. Unchanged tensors are the model's own (detached, not copied); folded weights are new.
    """
    modules = lora_modules(model)

    def join(*parts: str) -> str:
        return ".".join(p for p in parts if p)

    rename = {}
    for name, m in modules.items():
        rename[join(name, "lora_A")] = rename[join(name, "lora_B")] = None
        rename[join(name, "base", "weight")] = (join(name, "weight"), m)
        rename[join(name, "base", "bias")] = (join(name, "bias"), None)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key not in rename:
                out[key] = value.detach()
                continue
            target = rename[key]
            if target is None:
                continue
            new_key, m = target
            if m is not None and not m.merged:
                value = value + m.delta_weight().to(value.device)
            out[new_key] = value.detach()
    return out
