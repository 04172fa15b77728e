"""Transfer-learning sections: the imported base models, and one table per task comparing the systems
measured on it in this run.

Imported weights: per import stage, the source (``pretrained:NAME`` or a directory), the checkpoint's
architecture (``model_config.json``), parameters, tokens added and the verify result against
``transformers``.

Task tables: each task stage (``TASKS``) reports what it measured as columns: the fine-tuned model,
labelled by where its weights started (followed through ``RunData.lineage`` from its ``model`` input to
the import or pretrain stage at the root: "from pretrained (NAME import)", "from scratch (pretrained
here)"), the untouched base where the stage scored it before training, and every classic baseline it
trained (a metric ``NAME_<metric>`` or ``baseline_NAME_<metric>``, NAME one of ``BASELINES``). Stages
evaluated on the same data (input hash and example count) share a table; columns and rows with no value
in this run are left out. The section appears only when some model of the run started from imported
weights, so a run without an import renders as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.report.collect import IMPORT_KIND, ImportedModel, RunData, Stage, input_stages
from lmforge.report.sections import Section, Table
from lmforge.report.tables import fmt_value

# column roles, in the order columns appear
IMPORTED, SCRATCH, OTHER, UNTOUCHED, BASELINE = range(5)
# classic baselines a stage may report: metric-name prefix → column label
BASELINES = {
    "bow": "bag-of-words logistic regression",
    "bm25": "BM25",
    "tfidf": "TF-IDF",
    "crf": "CRF (hand features)",
    "lookup": "most-frequent tag",
}
MAX_CHAIN = 8  # fine-tune of a fine-tune of ...: how far a base is followed back to its root


@dataclass
class Base:
    """Where a fine-tuned model's weights started."""

    label: str  # its column label: "from pretrained (all-MiniLM-L6-v2 import)"
    short: str  # the base itself, for the untouched-base column: "all-MiniLM-L6-v2 import"
    role: int  # IMPORTED, SCRATCH or OTHER


@dataclass
class Column:
    """One system's scores on a task: row name → value (rows it has no number for are absent)."""

    label: str
    role: int
    values: dict[str, float]
    stage: str  # the instance that measured it


@dataclass
class Measured:
    """What one stage measured on one task and evaluation set."""

    task: str  # "Classification"
    data: str  # the evaluation data, for the table title
    key: tuple[Any, ...]  # the evaluation data's identity: stages with equal keys share a table
    rows: tuple[str, ...]
    columns: list[Column] = field(default_factory=list)


def import_section(run: RunData) -> Section | None:
    """Each import stage: source, architecture, size, tokens added, verify result; ``None`` without one."""
    if not run.imports:
        return None
    section = Section("Imported weights")
    for imported in run.imports:
        stage = imported.stage
        section.blocks.append(("h3", stage.instance))
        where = f"{imported.source} ({imported.location})" if imported.location else imported.source
        section.blocks.append(
            (
                "p",
                f"Weights read from {where or 'an unrecorded source'} and converted to an lmforge checkpoint"
                f" by the {stage.kind} stage: pretrained elsewhere, not in this run.",
            )
        )
        section.blocks.append(("table", Table("", ("", "value"), _import_rows(imported))))
    return section


def _import_rows(imported: ImportedModel) -> list[list[str]]:
    m, arch, config = imported.stage.metrics, imported.architecture, imported.stage.config
    rows = [["source", imported.source or "not recorded"]]
    if imported.location:
        rows.append(["directory read", imported.location])
    for key, label in (
        ("arch", "architecture"),
        ("n_layer", "layers"),
        ("n_embd", "width"),
        ("n_head", "attention heads"),
        ("mlp_hidden", "MLP width"),
        ("block_size", "context (tokens)"),
    ):
        if key in arch:
            rows.append([label, fmt_value(arch[key])])
    if _num(m.get("parameters")):
        rows.append(["parameters", f"{int(m['parameters']):,}"])
    if _num(m.get("vocab_size")):
        rows.append(["vocabulary", fmt_value(m["vocab_size"])])
    if _num(m.get("added_tokens")):
        rows.append(["tokens added (lmforge's specials)", fmt_value(m["added_tokens"])])
    if _num(m.get("mlm_head_imported")):
        rows.append(["MLM head imported", "yes" if m["mlm_head_imported"] else "no"])
    if _num(m.get("dropped_tensors")):
        rows.append(["tensors dropped", fmt_value(m["dropped_tensors"])])
    checks = [  # cosines to 8 decimals: 4 significant digits would round 0.99999988 to 1
        ("max_hidden_diff", "max hidden-state difference", "{:.3g}"),
        ("min_embedding_cosine", "min sentence-embedding cosine", "{:.8f}"),
        ("max_logit_diff", "max logit difference", "{:.3g}"),
    ]
    found = [[label, form.format(m[key])] for key, label, form in checks if _num(m.get(key))]
    if found:
        tolerance = config.get("tolerance")
        rows.append(["verified against transformers", f"yes (tolerance {fmt_value(tolerance)})"])
        rows += found
    else:
        rows.append(
            ["verified against transformers", "no" if config.get("verify") is False else "not recorded"]
        )
    return rows


def transfer_section(run: RunData) -> Section | None:
    """One table per task and evaluation set; ``None`` unless a model here started from imported weights."""
    tables: dict[tuple[Any, ...], Measured] = {}
    for stage in run.stages:
        measure = TASKS.get(stage.kind)
        for measured in measure(stage, run) if measure is not None else []:
            merged = tables.setdefault((measured.task, *measured.key), _empty_like(measured))
            merged.columns += [c for c in measured.columns if c.values]
    if not any(c.role == IMPORTED for t in tables.values() for c in t.columns):
        return None
    section = Section("Transfer learning")
    section.blocks.append(
        (
            "p",
            "Each table holds the systems measured on one task and evaluation set in this run: fine-tuned"
            " models labelled by where their weights started, the untouched base where the stage scored it"
            " before training, and the classic baselines the stage trained. Columns with no value in this"
            " run are left out.",
        )
    )
    for measured in tables.values():
        columns = _distinct(sorted(measured.columns, key=lambda c: c.role))
        if not columns:
            continue
        rows = [
            [row, *(fmt_value(c.values[row]) if row in c.values else "" for c in columns)]
            for row in measured.rows
            if any(row in c.values for c in columns)
        ]
        rows.append(["measured by", *(c.stage for c in columns)])
        header = ("metric", *(c.label for c in columns))
        section.blocks.append(("table", Table(f"{measured.task}: {measured.data}", header, rows)))
    return section


def _empty_like(measured: Measured) -> Measured:
    return Measured(measured.task, measured.data, measured.key, measured.rows)


def _distinct(columns: list[Column]) -> list[Column]:
    """Drop a column repeating another's label and values (two stages, one baseline); a column repeating
    only the label gets its stage's name."""
    kept: list[Column] = []
    for column in columns:
        same = [c for c in kept if c.label == column.label]
        if any(c.values == column.values for c in same):
            continue
        if same:
            column = Column(f"{column.label} · {column.stage}", column.role, column.values, column.stage)
        kept.append(column)
    return kept


# --------------------------------------------------------------------------------------------------
# bases


def base_of(stage: Stage, run: RunData, key: str = "model") -> Base:
    """Where the model ``stage`` trained from its ``key`` input started: the import or pretrain stage
    found by following ``model`` inputs back (at most ``MAX_CHAIN`` stages), with the stages on the way."""
    via: list[str] = []
    target = run.lineage.get(stage.instance, {}).get(key)
    while target is not None and len(via) < MAX_CHAIN:
        if target.kind.startswith(IMPORT_KIND):
            name = _import_name(target, run)
            return Base(_via(f"from pretrained ({name} import)", via), f"{name} import", IMPORTED)
        if target.kind == "pretrain":
            here = any(s.dir == target.dir for s in run.stages)
            where = "pretrained here" if here else f"pretrained in {target.dir.parent.name}/{target.dir.name}"
            return Base(_via(f"from scratch ({where})", via), where, SCRATCH)
        via.append(target.instance)
        target = _inputs_of(target, run).get("model")
    ref = stage.config.get(key, "")
    name = Path(str(ref)).name or str(ref) or "an unrecorded model"
    return Base(f"from {name}", name, OTHER)


def _via(label: str, via: list[str]) -> str:
    return f"{label} via {' → '.join(reversed(via))}" if via else label


def _import_name(stage: Stage, run: RunData) -> str:
    found = next((i for i in run.imports if i.stage.dir == stage.dir), None)
    if found is not None:
        return found.name
    source = str(stage.config.get("model", ""))
    return ImportedModel(stage, source, "", {}).name


def _inputs_of(stage: Stage, run: RunData) -> dict[str, Stage]:
    """The stages ``stage``'s inputs point at: collected for the run's stages, looked up for others."""
    if any(s.dir == stage.dir for s in run.stages):
        return run.lineage.get(stage.instance, {})
    return input_stages(stage, run.stages)


# --------------------------------------------------------------------------------------------------
# what each task stage measured


def _fine_tuned(stage: Stage, run: RunData, values: dict[str, Any], key: str = "model") -> Column:
    base = base_of(stage, run, key)
    return Column(base.label, base.role, _numbers(values), stage.instance)


def _untouched(stage: Stage, run: RunData, values: dict[str, Any]) -> Column:
    base = base_of(stage, run)
    return Column(f"untouched base ({base.short})", UNTOUCHED, _numbers(values), stage.instance)


def _baselines(stage: Stage, metrics: dict[str, str]) -> list[Column]:
    """Columns of the classic baselines ``stage`` reported: for row → metric name ``metrics``, the values
    of ``NAME_<metric>`` or ``baseline_NAME_<metric>`` for each NAME of ``BASELINES``."""
    m, columns = stage.metrics, []
    preprocess = stage.config.get("preprocess")
    for name, label in BASELINES.items():
        values = {row: m.get(f"{name}_{k}", m.get(f"baseline_{name}_{k}")) for row, k in metrics.items()}
        if name == "bow" and isinstance(preprocess, str) and preprocess not in ("", "none"):
            label = f"{label} ({preprocess})"  # the stage's text preprocessing (lemmas, stems)
        columns.append(Column(label, BASELINE, _numbers(values), stage.instance))
    return columns


def _eval_data(stage: Stage, *names: str) -> tuple[str, tuple[Any, ...]]:
    """``(label, identity)`` of the evaluation data: the first of the inputs ``names`` the stage has; the
    last name is the training set, of which ``val_fraction`` is held out when no other is given."""
    inputs = stage.manifest.get("inputs")
    inputs = inputs if isinstance(inputs, dict) else {}
    for i, name in enumerate(names):
        record = inputs.get(name)
        if isinstance(record, dict):
            label = Path(str(record.get("path", name))).name
            identity: tuple[Any, ...] = (name, record.get("hash") or record.get("path"))
            if i == len(names) - 1 and len(names) > 1:
                fraction, seed = stage.config.get("val_fraction"), stage.config.get("seed")
                label = f"{fmt_value(fraction)} of {label} held out"
                identity += (fraction, seed)
            return label, identity
    return "evaluation data not recorded", (stage.instance,)


def _count(label: str, n: Any, unit: str) -> tuple[str, tuple[Any, ...]]:
    return (f"{label} ({int(n)} {unit})", (n,)) if _num(n) else (label, ())


def _classify(stage: Stage, run: RunData) -> list[Measured]:
    m = stage.metrics
    data, key = _eval_data(stage, "dev", "train")
    data, n = _count(data, m.get("dev_examples"), "examples")
    metrics = {"accuracy": "accuracy", "macro F1": "macro_f1"}
    columns = [_fine_tuned(stage, run, {row: m.get(k) for row, k in metrics.items()})]
    if "compare_to" in run.lineage.get(stage.instance, {}) or stage.config.get("compare_to"):
        compared = {row: m.get(f"compare_{k}") for row, k in metrics.items()}
        columns.append(_fine_tuned(stage, run, compared, key="compare_to"))
    return [Measured("Classification", data, key + n, tuple(metrics), columns + _baselines(stage, metrics))]


def _ner(stage: Stage, run: RunData) -> list[Measured]:
    m = stage.metrics
    split = "test" if _num(m.get("test_f1")) else "dev"
    data, key = _eval_data(stage, *(("test",) if split == "test" else ()), "dev", "train")
    data, n = _count(data, m.get(f"{split}_sentences"), "sentences")
    scheme = stage.config.get("scheme", "")
    metrics = {
        "entity F1": f"{split}_f1",
        "precision": f"{split}_precision",
        "recall": f"{split}_recall",
        "macro F1 (over types)": f"{split}_macro_f1",
    }
    columns = [_fine_tuned(stage, run, {row: m.get(k) for row, k in metrics.items()})]
    task = f"Named entities ({scheme})" if scheme else "Named entities"
    return [Measured(task, data, key + n + (scheme,), tuple(metrics), columns + _baselines(stage, metrics))]


def _qa(stage: Stage, run: RunData) -> list[Measured]:
    m = stage.metrics
    split = "test" if _num(m.get("test_f1")) else "dev"
    data, key = _eval_data(stage, "data")
    where = "test split" if split == "test" else "held-out training articles"
    data, n = _count(f"{data}, {where}", m.get(f"{split}_questions"), "questions")
    metrics = {"exact match": f"{split}_exact_match", "F1": f"{split}_f1"}
    columns = [_fine_tuned(stage, run, {row: m.get(k) for row, k in metrics.items()})]
    if split == "dev":
        columns.append(_untouched(stage, run, {"F1": m.get("dev_f1_before")}))
    return [
        Measured(
            "Question answering",
            data,
            key + n + (split,),
            tuple(metrics),
            columns + _baselines(stage, metrics),
        )
    ]


def _reward(stage: Stage, run: RunData) -> list[Measured]:
    m = stage.metrics
    data, key = _eval_data(stage, "val", "train")
    data, n = _count(data, m.get("val_pairs"), "pairs")
    metrics = {"pairwise accuracy": "rm_pairwise_accuracy"}
    columns = [
        _fine_tuned(stage, run, {"pairwise accuracy": m.get("rm_pairwise_accuracy")}),
        _untouched(stage, run, {"pairwise accuracy": m.get("base_rm_pairwise_accuracy")}),
    ]
    return [Measured("Reward model", data, key + n, tuple(metrics), columns + _baselines(stage, metrics))]


def _retrieval(stage: Stage, run: RunData) -> list[Measured]:
    m = stage.metrics
    data, key = _eval_data(stage, "val", "train")
    metrics = {"recall@1": "recall_at_1", "recall@5": "recall_at_5"}
    columns = [
        _fine_tuned(stage, run, {row: m.get(k) for row, k in metrics.items()}),
        _untouched(stage, run, {row: m.get(f"{k}_before") for row, k in metrics.items()}),
    ]
    return [Measured("Retrieval", data, key, tuple(metrics), columns + _baselines(stage, metrics))]


# stage kind → what it measured
TASKS: dict[str, Callable[[Stage, RunData], list[Measured]]] = {
    "finetune.classify": _classify,
    "finetune.ner": _ner,
    "finetune.qa": _qa,
    "align.reward": _reward,
    "finetune.contrastive": _retrieval,
}


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if _num(v)}


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
