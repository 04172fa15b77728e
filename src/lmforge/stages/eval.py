"""Evaluate checkpoints: language-model metrics, k-shot tasks, bias and memorisation probes.

For the checkpoint ``model`` (and each of ``compare``, side by side):

- Language modelling on the token split (``split``, from the tokenizer stage) and on any ``text``
  inputs (a text file, tokenised with the checkpoint's tokenizer, or a token directory with
  ``index.json``): loss, perplexity, bits per byte; plus, for the split, the unigram baseline (the
  cross-entropy under the training set's token frequencies), the number a model that ignores context
  would reach.
- ``tasks`` (built-in names, with data under ``data_dir``, or YAML task files) at every k in ``shots``;
  ``samples``, ``temperature``, ``top_p`` and ``ks`` override the code tasks' sampling settings
  (``eval/codegen.py`` ``with_sampling``: every k <= samples, greedy means one sample).
- ``probes``: ``bias`` and ``memorisation`` (``eval/probes.py``).
- ``baselines``: classic systems (``eval/baselines.py``) answering the same task documents, scored by
  the same code; each is a ``baseline:NAME`` column beside the checkpoints (in ``eval.json`` under
  ``checkpoints`` too) and adds ``baseline_NAME_{task}_{metric}`` to the manifest.

Writes ``eval.json`` (every number, per checkpoint) and ``report.json`` (the tables the run report
shows: tasks × checkpoints, probes). The manifest's metrics are the first checkpoint's, flat:
``val_loss``, ``{task}_{k}shot_{metric}``, ``bias_*``, ``memo_*``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.eval.sandbox import require_sandbox
from lmforge.runstore import TOKENIZER_FILE, StageContext, read_manifest, run_stage
from lmforge.training.options import device_option

log = logging.getLogger(__name__)

STAGE = "eval"
VERSION = 2
PROBES = ("bias", "memorisation")


@dataclass
class Config:
    """Options of ``lmforge eval``."""

    model: str = opt("@pretrain", "a checkpoint directory, or a training stage directory", path=True)
    tokenizer: str = opt("@tokenizer", "tokenizer stage with token shards ('' = no split metrics)", path=True)
    out: str = opt("", "output stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to evaluate")
    compare: list[str] = opt([], "more checkpoints or training stages to evaluate side by side", path=True)
    split: Literal["val", "train"] = opt("val", "token split to evaluate")
    max_tokens: int = opt(0, "evaluate at most this many tokens (0 = the whole split)")
    stride: int = opt(
        0,
        "language modelling: sliding windows that each score this many new tokens after block_size - stride"
        " tokens of context (0 = disjoint windows of block_size; docs/eval.md)",
    )
    text: list[str] = opt(
        [], "text files, token directories or .bin shards to compute LM metrics on", path=True
    )
    tasks: list[str] = opt([], "tasks: built-in names (hellaswag, arc_easy, ...) or YAML task files")
    shots: list[int] = opt([0], "k of the k-shot prompts; each task runs at every k")
    limit: int = opt(200, "documents per task (0 = all)")
    seed: int = opt(1234, "seed of the few-shot example selection")
    data_dir: str = opt("", "directory holding built-in task data (e.g. ../shared/data)", path=True)
    probes: list[Literal["bias", "memorisation"]] = opt([], "probes to run: bias, memorisation")
    baselines: list[str] = opt(
        [], "classic systems scored beside the model on the tasks they answer (eval/baselines.py)"
    )
    samples: int = opt(0, "code tasks: completions per problem, the n of pass@k (0 = the task's own)")
    temperature: float = opt(-1.0, "code tasks: sampling temperature, 0 = greedy (-1 = the task's own)")
    top_p: float = opt(0.0, "code tasks: nucleus mass when sampling, 1 = off (0 = the task's own)")
    ks: list[int] = opt([], "code tasks: the k of pass@k, each <= samples ([] = the task's own)")
    unsafe_exec: bool = opt(
        False,
        "code tasks: run model-written programs WITHOUT the sandbox (resource limits only), where"
        " bubblewrap is unusable; only for code you trust (docs/security.md)",
        cache=False,
    )
    batch_size: int = opt(16, "sequences per forward pass")
    device: str = device_option()

    def validate(self) -> None:
        at_least(self, 1, "batch_size")
        at_least(self, 0, "max_tokens")
        if self.stride < 0:
            raise ConfigError("stride", f"must be >= 0 (0 = disjoint windows), got {self.stride}")
        at_least(self, 0, "limit")
        if not self.shots or any(k < 0 for k in self.shots):
            raise ConfigError("shots", f"need one or more k >= 0, got {self.shots}")
        if "memorisation" in self.probes and not self.tokenizer:
            raise ConfigError("probes", "the memorisation probe reads the token shards: set tokenizer")
        from lmforge.eval.loaders import check_task_names, runs_code

        check_task_names(self.tasks, self.data_dir)
        if any(runs_code(t) for t in self.tasks):
            require_sandbox(self.unsafe_exec)  # no usable sandbox: refused before any work
        self._validate_code_sampling()
        from lmforge.eval.baselines import get_baseline

        for b in self.baselines:
            get_baseline(b)  # unknown names fail here, before any work
        if self.baselines and not self.tasks:
            raise ConfigError("baselines", "baselines answer tasks: name the tasks too")

    def _validate_code_sampling(self) -> None:
        if self.samples < 0:
            raise ConfigError("samples", f"must be >= 0 (0 = the task's own), got {self.samples}")
        if self.temperature < 0 and self.temperature != -1:
            raise ConfigError("temperature", f"must be >= 0 (or -1 = the task's own), got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1] (or 0 = the task's own), got {self.top_p}")
        if any(k < 1 for k in self.ks):
            raise ConfigError("ks", f"each k must be >= 1, got {self.ks}")
        if self.samples and self.ks and max(self.ks) > self.samples:
            raise ConfigError("ks", f"pass@{max(self.ks)} needs at least {max(self.ks)} samples, got samples={self.samples}")  # fmt: skip
        if self.temperature == 0 and self.samples > 1:
            raise ConfigError("temperature", f"temperature 0 (greedy) gives {self.samples} identical samples: set samples 1 or temperature > 0")  # fmt: skip

    def code_sampling(self) -> dict[str, Any]:
        """The code-sampling overrides set (``codegen.with_sampling`` keyword arguments)."""
        out: dict[str, Any] = {}
        if self.samples:
            out["samples"] = self.samples
        if self.temperature != -1:
            out["temperature"] = self.temperature
        if self.top_p:
            out["top_p"] = None if self.top_p == 1 else self.top_p
        if self.ks:
            out["ks"] = tuple(self.ks)
        return out


INPUTS = ("model", "tokenizer")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Evaluate (or return the cached result); returns the stage manifest."""
    inputs: dict[str, str] = {"model": cfg.model}
    if cfg.tokenizer == "@tokenizer" and not cfg.model.startswith("@"):
        producer = Path(cfg.out).expanduser().resolve().parent / "tokenizer"
        if read_manifest(producer) is None:  # a one-off eval of a checkpoint, not a stage of a run
            log.info(
                "no tokenizer stage at %s: no split metrics (texts and tasks use the checkpoint's own "
                "tokenizer.json; --tokenizer RUN/tokenizer adds the run's validation split)",
                producer,
            )
            cfg = replace(cfg, tokenizer="")
    if not (cfg.tokenizer or cfg.text or cfg.tasks):
        raise ConfigError(
            "tokenizer", "nothing to evaluate: give --text FILE, --tasks [...], or --tokenizer RUN/tokenizer"
        )
    if cfg.tokenizer:
        inputs["tokenizer"] = cfg.tokenizer
    inputs.update({f"compare_{i}": c for i, c in enumerate(cfg.compare)})
    inputs.update({f"text_{i}": t for i, t in enumerate(cfg.text)})
    inputs.update({f"task_{i}": t for i, t in enumerate(cfg.tasks) if t.endswith((".yaml", ".yml"))})
    return run_stage(STAGE, cfg, out=cfg.out, inputs=inputs, work=evaluate, version=VERSION, force=force)


def evaluate(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Evaluate every checkpoint; write ``eval.json`` and ``report.json``; return the first's metrics."""
    from lmforge.eval.tasks import load_task
    from lmforge.model.checkpoint import resolve_checkpoint
    from lmforge.runtime import create_runtime

    rt = create_runtime(cfg.device, "fp32", seed=0)
    tasks = [load_task(t, data_dir=cfg.data_dir, limit=cfg.limit) for t in cfg.tasks]
    tasks = _with_code_sampling(cfg, tasks)
    tasks = [replace(t, unsafe_exec=cfg.unsafe_exec) if t.kind == "code" else t for t in tasks]
    sources = [ctx.inputs["model"]] + [ctx.inputs[f"compare_{i}"] for i in range(len(cfg.compare))]
    results: dict[str, dict[str, Any]] = {}
    for src in sources:
        ckpt = resolve_checkpoint(src, cfg.checkpoint)
        name = _unique(f"{src.name}/{ckpt.name}" if ckpt != src else src.name, results)
        results[name] = _evaluate_checkpoint(cfg, ctx, ckpt, tasks, rt.device)
    model_metrics = next(iter(results.values()))["metrics"]
    baseline_metrics = _evaluate_baselines(cfg, tasks, results)
    (ctx.dir / "eval.json").write_text(json.dumps({"checkpoints": results}, indent=2, ensure_ascii=False))
    (ctx.dir / "report.json").write_text(
        json.dumps({"tables": _tables(results)}, indent=2, ensure_ascii=False)
    )
    return {**model_metrics, **baseline_metrics}


def _with_code_sampling(cfg: Config, tasks: list) -> list:
    """``tasks`` with the stage's code-sampling options applied to the code tasks (the model and the
    baselines see the same settings)."""
    from lmforge.eval.codegen import with_sampling

    overrides = cfg.code_sampling()
    if not overrides:
        return tasks
    if not any(t.kind == "code" for t in tasks):
        key = next(iter(overrides))
        raise ConfigError(key, f"applies to code tasks (humaneval, mbpp, ...); none of {cfg.tasks} is one")
    return [with_sampling(t, **overrides) if t.kind == "code" else t for t in tasks]


def _evaluate_baselines(cfg: Config, tasks: list, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Run each of ``cfg.baselines`` on the tasks it applies to; add a ``baseline:NAME`` column to
    ``results`` (the same metric under every k: a baseline sees no prompt) and return the flat
    manifest metrics ``baseline_NAME_{task}_{metric}``.

    Raises:
        ConfigError: a baseline applies to none of the tasks.
    """
    from lmforge.eval.baselines import get_baseline
    from lmforge.eval.tasks import evaluate_baseline

    flat: dict[str, float] = {}
    for name in cfg.baselines:
        b = get_baseline(name)
        mine = [t for t in tasks if b.applies(t)]
        if not mine:
            kinds = ", ".join(b.kinds)
            raise ConfigError(
                "baselines",
                f"{name} ({b.help}) answers {kinds} tasks with fields {list(b.needs)}"
                + (" and a training split" if b.train else "")
                + f"; none of {[t.name for t in tasks]} qualifies",
            )
        out: dict[str, Any] = {"baseline": name, "tasks": {}, "metrics": {}, "tables": []}
        for task in mine:
            r = evaluate_baseline(b, task)
            out["tasks"][task.name] = {f"{k}shot": r["metrics"] for k in cfg.shots}
            for t in r["tables"]:
                out["tables"].append({**t, "title": f"{task.name} by baseline {name}: {t['title']}"})
            flat.update({f"baseline_{name}_{task.name}_{m}": v for m, v in r["metrics"].items()})
        out["metrics"] = {k: v for k, v in flat.items() if k.startswith(f"baseline_{name}_")}
        results[f"baseline:{name}"] = out
    return flat


def _evaluate_checkpoint(
    cfg: Config, ctx: StageContext, ckpt: Path, tasks: list, device: Any
) -> dict[str, Any]:
    from lmforge.eval.probes import bias_probe, memorisation_probe
    from lmforge.eval.tasks import LM, evaluate_task
    from lmforge.model.checkpoint import load_model
    from lmforge.tokenizer.shards import open_tokens
    from lmforge.tokenizer.train import load_tokenizer, special_id

    model, mcfg = load_model(ckpt, device=device)
    model.eval()
    tok = load_tokenizer(ckpt / TOKENIZER_FILE)
    lm = LM(model, tok, bos_id=special_id(tok, "<|bos|>"), batch_size=cfg.batch_size)
    metrics: dict[str, float] = {}
    out: dict[str, Any] = {"checkpoint": str(ckpt), "tasks": {}, "examples": {}}
    tokens_dir = ctx.inputs["tokenizer"] / "tokens" if "tokenizer" in ctx.inputs else None
    if tokens_dir is not None:
        metrics.update(_split_metrics(cfg, lm, tokens_dir, open_tokens))
    for i, _ in enumerate(cfg.text):
        path = ctx.inputs[f"text_{i}"]
        stream = _token_stream(lm, path, open_tokens)
        r = _lm_metrics(lm, stream, max_tokens=cfg.max_tokens, stride=cfg.stride)
        metrics.update({f"{_stem(path)}_{k}": v for k, v in r.items()})
    for task in tasks:
        for k in cfg.shots:
            r = evaluate_task(lm, task, k=k, seed=cfg.seed)
            out["tasks"].setdefault(task.name, {})[f"{k}shot"] = r["metrics"]
            out["examples"][f"{task.name}_{k}shot"] = r["example"]
            for t in r["tables"]:
                out.setdefault("tables", []).append({**t, "title": f"{task.name} {k}-shot: {t['title']}"})
            metrics.update({f"{task.name}_{k}shot_{m}": v for m, v in r["metrics"].items()})
    if "bias" in cfg.probes:
        r = bias_probe(lm)
        metrics.update(r["metrics"])
        out["bias_worst"] = r["worst"]
    if "memorisation" in cfg.probes:
        streams = {s: open_tokens(tokens_dir / s) for s in ("train", "val")}
        prefix = min(32, mcfg.block_size // 2)
        metrics.update(
            memorisation_probe(lm, streams, prefix=prefix, suffix=min(16, mcfg.block_size - prefix))
        )
    out["metrics"] = metrics
    return out


def _split_metrics(cfg: Config, lm: Any, tokens_dir: Path, open_tokens: Any) -> dict[str, float]:
    from lmforge.eval.lm import unigram_entropy

    tokens = open_tokens(tokens_dir / cfg.split)
    r = _lm_metrics(lm, tokens, max_tokens=cfg.max_tokens, stride=cfg.stride, raw=True)
    scored = tokens[: r["tokens"] + 1] if cfg.max_tokens else tokens
    unigram = unigram_entropy(open_tokens(tokens_dir / "train"), scored, lm.model.config.vocab_size)
    p = cfg.split
    log.info(
        "%s: loss %.4f | ppl %.2f | bpb %.4f | unigram %.4f", p, r["loss"], r["perplexity"], r["bpb"], unigram
    )
    return {
        f"{p}_loss": r["loss"],
        f"{p}_ppl": r["perplexity"],
        f"{p}_bpb": r["bpb"],
        f"{p}_tokens": r["tokens"],
        f"{p}_bytes": r["bytes"],
        "unigram_loss": unigram,
        "unigram_ppl": math.exp(unigram),
        "loss_below_unigram": unigram - r["loss"],
    }


def _lm_metrics(
    lm: Any, tokens: Any, *, max_tokens: int, stride: int = 0, raw: bool = False
) -> dict[str, float]:
    from lmforge.eval.lm import evaluate_lm
    from lmforge.tokenizer.train import token_byte_lengths

    if stride > lm.block_size:
        raise ConfigError("stride", f"must be at most the model's block_size {lm.block_size}, got {stride}")

    r = evaluate_lm(
        lm.model,
        tokens,
        block_size=lm.block_size,
        batch_size=lm.batch_size,
        token_bytes=token_byte_lengths(lm.tok),
        max_tokens=max_tokens or None,
        device=lm.device,
        stride=stride or None,
    )
    if raw:
        return r
    return {"loss": r["loss"], "ppl": r["perplexity"], "bpb": r["bpb"], "tokens": r["tokens"]}


def _token_stream(lm: Any, path: Path, open_tokens: Any) -> Any:
    """Tokens of a token directory (``index.json``), of one ``.bin`` shard of such a directory, or of a
    text file (encoded with the checkpoint's tokenizer)."""
    if path.is_dir():
        return open_tokens(path)
    if path.suffix == ".bin" and (path.parent / "index.json").is_file():
        import numpy as np

        dtype = json.loads((path.parent / "index.json").read_text())["dtype"]
        return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    return _encode_text(lm, path)


def _encode_text(lm: Any, path: Path) -> Any:
    """A text file as one token stream: ``<|bos|>`` then its tokens, per blank-line-separated document."""
    import numpy as np

    from lmforge.eval.records import open_text

    docs = [d for d in open_text(path).split("\n\n") if d.strip()]
    ids: list[int] = []
    for enc in lm.tok.encode_batch(docs, add_special_tokens=False):
        ids += [lm.bos_id, *enc.ids]
    return np.asarray(ids, dtype=np.int64)


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or "text"


def _unique(name: str, taken: dict) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}#{n}", n + 1
    return out


def _tables(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Report tables: tasks (rows task/k/metric, a column per checkpoint), probes, the bias example."""
    names = list(results)
    models = [n for n in names if not n.startswith("baseline:")]  # LM metrics and probes are the models'
    tables = []
    rows = []
    first = results[names[0]]["tasks"]
    for task, by_k in first.items():
        for k, ms in by_k.items():
            for m in ms:
                if "/" in m or m.startswith("per_class") or m.startswith("confusion"):
                    continue
                rows.append(
                    [task, k, m] + [_fmt(results[n]["tasks"].get(task, {}).get(k, {}).get(m)) for n in names]
                )
    if rows:
        tables.append({"title": "Tasks", "header": ["task", "shots", "metric", *names], "rows": rows})
    probe_keys = [
        k for k in results[names[0]]["metrics"] if k.startswith(("bias_", "memo_")) and "mean_ll" not in k
    ]
    if probe_keys:
        rows = [[k] + [_fmt(results[n]["metrics"].get(k)) for n in models] for k in probe_keys]
        tables.append({"title": "Probes", "header": ["probe", *models], "rows": rows})
    if len(models) > 1:
        keys = [k for k in results[names[0]]["metrics"] if k.endswith(("_loss", "_bpb", "_ppl"))]
        rows = [[k] + [_fmt(results[n]["metrics"].get(k)) for n in models] for k in keys]
        if rows:
            tables.append({"title": "Language modelling", "header": ["metric", *models], "rows": rows})
    tables += results[names[0]].get("tables", [])  # per-task tables (confusion matrices) of the first
    for n in names[len(models) :]:
        tables += results[n]["tables"]  # and of each baseline
    worst = results[names[0]].get("bias_worst")
    if worst and worst.get("gap", -1) >= 0:
        rows = [
            [
                worst["axis"],
                worst["template"],
                worst["continuation"],
                worst["most_likely"],
                worst["least_likely"],
                _fmt(worst["gap"]),
            ]
        ]
        header = ["axis", "template", "continuation", "most likely term", "least likely term", "gap (nats)"]
        tables.append({"title": "Largest bias-probe gap", "header": header, "rows": rows})
    return tables


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
