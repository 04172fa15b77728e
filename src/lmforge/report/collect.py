"""Read a run directory into plain data for the report: manifests, data stats, loss curves, evals, samples,
imported models, and which stage each stage's inputs point at.

Only finished stages count (``runstore.stage_dirs``: a directory with a complete ``manifest.json``, not
``*.partial``). Everything else is optional: a missing file leaves its section empty (the renderers then
omit it); torn ``.jsonl`` lines are skipped and an unreadable ``stats.json`` is skipped with a warning.

Lineage: a manifest records every input twice, as configured (``config[name]``: ``@import``,
``@pretrain/ckpt/step_100`` or a plain path) and as resolved (``inputs[name]["path"]``). An input points
at a stage when its resolved path is that stage's directory or lies inside it; failing that (the run
directory was moved since), an ``@name`` reference names a stage of the same run. A path outside the run
is followed up to the nearest finished stage manifest, so a fine-tune of another run's import still
shows where its weights came from."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError
from lmforge.log import read_metrics
from lmforge.runstore import read_manifest, stage_dirs

logger = logging.getLogger(__name__)

CURVE_KINDS = ("pretrain", "finetune")  # stage kinds (prefixes) whose metrics.jsonl holds a loss curve
ALIGN_KIND = "align."  # align.dpo, align.reward, align.ppo, align.grpo: reward / KL / accuracy curves
# metrics.jsonl keys of training stages drawn beside the loss (absent keys are simply not drawn)
TRAIN_SERIES = ("lr", "grad_norm", "tokens_per_s")
# metrics.jsonl keys of align stages whose name contains one of these words become alignment curves
ALIGN_WORDS = ("reward", "kl", "accuracy", "margin", "win_rate", "score")
IMPORT_KIND = "import."  # import.hf: weights converted from another library, not trained in this run
PRETRAINED_PREFIX = "pretrained:"  # import's model names weights a package installs: pretrained:NAME
# training.checkpoint.FINAL_FILE, named here so the report never imports torch: which checkpoint is last
FINAL_FILE = "final.json"
MAX_UP = 3  # a stage directory, its ckpt root, one checkpoint: how far up a path is searched for a manifest


@dataclass
class Stage:
    """One finished stage instance: its directory and its parsed ``manifest.json``."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def instance(self) -> str:
        return str(self.manifest.get("instance") or self.dir.name)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("stage", ""))

    @property
    def metrics(self) -> dict[str, Any]:
        metrics = self.manifest.get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        config = self.manifest.get("config")
        return config if isinstance(config, dict) else {}


@dataclass
class Curve:
    """Training curve of one stage: ``(step, value)`` pairs of ``loss`` and of ``val_loss``."""

    instance: str
    loss: list[tuple[float, float]]
    val_loss: list[tuple[float, float]]
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # lr, grad_norm, tokens_per_s


@dataclass
class DataStats:
    """The data stage: its numbers (manifest metrics) and its ``stats.json`` ({} when absent), read by
    ``report.funnel`` for the data funnel."""

    instance: str
    metrics: dict[str, Any]
    stats: dict[str, Any]


@dataclass
class SampleSet:
    """Prompt/completion pairs written by one ``generate`` stage."""

    instance: str
    samples: list[tuple[str, str]]


@dataclass
class FinetuneResult:
    """A fine-tuning stage: its headline metrics and the titled tables it wrote to ``report.json``
    (classification scores and confusion matrix, bag-of-words baseline, transfer comparison,
    perplexity before/after, retrieval)."""

    instance: str
    kind: str
    metrics: dict[str, Any]
    tables: list[dict[str, Any]]


@dataclass
class ImportedModel:
    """An import stage: where the weights came from, the checkpoint's architecture and the verify result."""

    stage: Stage
    source: str  # as configured: pretrained:NAME, a directory, or an @reference
    location: str  # the directory actually read (ckpt/final.json "source", else the resolved input)
    architecture: dict[str, Any]  # the checkpoint's model_config.json ({} when unreadable)

    @property
    def name(self) -> str:
        """Short name of the source: NAME of ``pretrained:NAME``, else the directory's name."""
        if self.source.startswith(PRETRAINED_PREFIX):
            return self.source[len(PRETRAINED_PREFIX) :]
        for text in (self.location, self.source):
            if Path(text).name and not text.startswith("@"):
                return Path(text).name
        return self.stage.instance


@dataclass
class RunData:
    """Everything the renderers need; empty fields mean the section is absent."""

    name: str
    stages: list[Stage]
    data: DataStats | None = None
    tokenizer: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    samples: list[SampleSet] = field(default_factory=list)
    finetune: list[FinetuneResult] = field(default_factory=list)
    eval_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # eval instance → tables
    align: list[Curve] = field(default_factory=list)  # series = every reward/KL/accuracy key found
    scaling: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # fit instance → fit.json
    predictions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # → prediction.json
    imports: list[ImportedModel] = field(default_factory=list)
    # stage instance → {input name → the finished stage it points at}, for inputs that point at one
    lineage: dict[str, dict[str, Stage]] = field(default_factory=dict)


def load_stages(run_dir: Path) -> list[Stage]:
    """Finished stages of ``run_dir`` (complete manifest, not ``*.partial``), sorted by ``started``.

    Raises:
        InputError: if ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist or is not a directory")
    stages = []
    for stage_dir in stage_dirs(run_dir):
        manifest = read_manifest(stage_dir)
        if manifest is not None and manifest.get("stage") != "report":  # could vanish between the reads
            stages.append(Stage(stage_dir, manifest))
    return stages


def load_manifests(run_dir: Path) -> list[dict[str, Any]]:
    """Manifests of the finished stages of ``run_dir``, sorted by ``started`` (see ``load_stages``)."""
    return [stage.manifest for stage in load_stages(run_dir)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file (``[]`` if it is missing; torn or non-object lines skipped)."""
    return [row for row in read_metrics(path) if isinstance(row, dict)]


def collect(run_dir: Path) -> RunData:
    """Gather every section's data from ``run_dir``."""
    run_dir = Path(run_dir)
    stages = load_stages(run_dir)
    run = RunData(name=run_dir.resolve().name, stages=stages)
    for stage in stages:
        run.lineage[stage.instance] = input_stages(stage, stages)
        if stage.kind.startswith(IMPORT_KIND):
            run.imports.append(_imported(stage))
        elif stage.kind == "data":
            run.data = _data_stats(stage)
        elif stage.kind == "tokenizer" and stage.metrics:
            run.tokenizer.append((stage.instance, stage.metrics))
        elif stage.kind.startswith(CURVE_KINDS):
            curve = _curve(stage)
            if curve.loss or curve.val_loss:
                run.curves.append(curve)
            if stage.kind.startswith("finetune"):
                run.finetune.append(_finetune(stage))
        elif stage.kind.startswith(ALIGN_KIND):
            curve = _curve(stage, ALIGN_WORDS)
            if curve.series:
                run.align.append(curve)
        elif stage.kind == "scaling.fit":
            fit = _read_json(stage.dir / "fit.json") if (stage.dir / "fit.json").exists() else None
            if isinstance(fit, dict) and "chinchilla" in fit and fit.get("points"):
                run.scaling.append((stage.instance, fit))
        elif stage.kind == "scaling.predict":
            pred = (
                _read_json(stage.dir / "prediction.json")
                if (stage.dir / "prediction.json").exists()
                else None
            )
            if isinstance(pred, dict) and _is_number(pred.get("predicted_loss")):
                run.predictions.append((stage.instance, pred))
        elif stage.kind == "eval" and stage.metrics:
            run.evals.append((stage.instance, stage.metrics))
            run.eval_tables[stage.instance] = _report_tables(stage)
        elif stage.kind == "generate":
            pairs = [
                (str(row.get("prompt", "")), str(row.get("completion", "")))
                for row in read_jsonl(stage.dir / "samples.jsonl")
            ]
            if pairs:
                run.samples.append(SampleSet(stage.instance, pairs))
    return run


def input_stages(stage: Stage, stages: list[Stage]) -> dict[str, Stage]:
    """Input name → the finished stage it points at, for each input of ``stage`` that points at one (in
    the run, by resolved path then by ``@name``; else the stage directory above a path outside the run)."""
    by_dir = {_real(s.dir): s for s in stages}
    by_name = {s.instance: s for s in stages}
    inputs = stage.manifest.get("inputs")
    found: dict[str, Stage] = {}
    for name, record in inputs.items() if isinstance(inputs, dict) else ():
        path = record.get("path") if isinstance(record, dict) else None
        ref = stage.config.get(name)
        target = _in_run(path, by_dir) or _by_reference(ref, by_name) or _outside_run(path)
        if target is not None and _real(target.dir) != _real(stage.dir):
            found[str(name)] = target
    return found


def _in_run(path: Any, by_dir: dict[Path, Stage]) -> Stage | None:
    """The run's stage whose directory is ``path`` or holds it."""
    if not isinstance(path, str) or not path:
        return None
    real = _real(Path(path))
    return next((by_dir[p] for p in (real, *real.parents) if p in by_dir), None)


def _by_reference(ref: Any, by_name: dict[str, Stage]) -> Stage | None:
    """The run's stage named by an ``@name`` or ``@name/file`` reference."""
    if not isinstance(ref, str) or not ref.startswith("@"):
        return None
    return by_name.get(ref[1:].split("/", 1)[0])


def _outside_run(path: Any) -> Stage | None:
    """The finished stage (of another run) whose directory is ``path`` or one of its ``MAX_UP`` parents."""
    if not isinstance(path, str) or not path:
        return None
    real = _real(Path(path))
    for candidate in (real, *real.parents)[:MAX_UP]:
        manifest = read_manifest(candidate) if candidate.is_dir() else None
        if isinstance(manifest, dict):
            return Stage(candidate, manifest)
    return None


def _real(path: Path) -> Path:
    """``path`` absolute with symbolic links resolved (a missing path resolves as far as it exists)."""
    return Path(path).expanduser().resolve()


def _imported(stage: Stage) -> ImportedModel:
    """An import stage's source, the directory it read, and its checkpoint's ``model_config.json``: the
    checkpoint ``ckpt/final.json`` names (``last``), else the highest-numbered ``ckpt/step_*``."""
    ckpt = stage.dir / "ckpt"
    final = _read_json(ckpt / FINAL_FILE) if (ckpt / FINAL_FILE).exists() else None
    final = final if isinstance(final, dict) else {}
    inputs = stage.manifest.get("inputs")
    model_input = inputs.get("model") if isinstance(inputs, dict) else None
    location = final.get("source") or (model_input.get("path") if isinstance(model_input, dict) else "")
    steps = sorted(ckpt.glob("step_*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1)
    chosen = ckpt / str(final["last"]) if isinstance(final.get("last"), str) else None
    config_dir = chosen if chosen is not None and chosen.is_dir() else (steps[-1] if steps else None)
    config_path = config_dir / "model_config.json" if config_dir is not None else None
    architecture = _read_json(config_path) if config_path is not None and config_path.exists() else None
    return ImportedModel(
        stage=stage,
        source=str(stage.config.get("model", "")),
        location=str(location or ""),
        architecture=architecture if isinstance(architecture, dict) else {},
    )


def _data_stats(stage: Stage) -> DataStats | None:
    """The data stage's numeric manifest metrics (or, when it has none, the numbers of ``stats.json``
    under dotted names) and its parsed ``stats.json``; None when it recorded neither."""
    stats = _read_json(stage.dir / "stats.json") if (stage.dir / "stats.json").exists() else None
    stats = stats if isinstance(stats, dict) else {}
    metrics = {k: v for k, v in stage.metrics.items() if _is_number(v)} or _flatten(stats)
    if not (metrics or stats):
        return None
    return DataStats(stage.instance, metrics, stats)


def _finetune(stage: Stage) -> FinetuneResult:
    """Metrics of a fine-tuning stage and the well-formed tables of its ``report.json`` (if any)."""
    metrics = {k: v for k, v in stage.metrics.items() if _is_number(v)}
    return FinetuneResult(stage.instance, stage.kind, metrics, _report_tables(stage))


def _report_tables(stage: Stage) -> list[dict[str, Any]]:
    """The well-formed ``{title, header, rows}`` tables of a stage's ``report.json`` (if any)."""
    data = _read_json(stage.dir / "report.json") if (stage.dir / "report.json").exists() else None
    tables = []
    for table in data.get("tables", []) if isinstance(data, dict) else []:
        if (
            isinstance(table, dict)
            and isinstance(table.get("header"), list)
            and isinstance(table.get("rows"), list)
        ):
            tables.append(
                {"title": str(table.get("title", "")), "header": table["header"], "rows": table["rows"]}
            )
    return tables


def _curve(stage: Stage, words: tuple[str, ...] = ()) -> Curve:
    """``loss``, ``val_loss`` and other series against ``step`` from the stage's ``metrics.jsonl``:
    ``TRAIN_SERIES`` for training stages, or (with ``words``) every key containing one of the words."""
    loss, val_loss = [], []
    series: dict[str, list[tuple[float, float]]] = {}
    for row in read_jsonl(stage.dir / "metrics.jsonl"):
        step = row.get("step")
        if not _is_number(step) or row.get("final"):
            continue
        if _is_number(row.get("loss")):
            loss.append((float(step), float(row["loss"])))
        if _is_number(row.get("val_loss")):
            val_loss.append((float(step), float(row["val_loss"])))
        for key, value in row.items():
            wanted = any(w in key for w in words) if words else key in TRAIN_SERIES
            if wanted and _is_number(value) and key != "step":
                series.setdefault(key, []).append((float(step), float(value)))
    return Curve(stage.instance, loss, val_loss, series)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numeric leaves of a nested dict, keyed by dotted path."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif _is_number(value):
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    """True for ints and floats (nan and inf included), false for bools and everything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or ``None`` (with a warning) when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("%s: unreadable JSON (%s), skipping", path, err)
        return None
