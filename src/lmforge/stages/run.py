"""Run every stage of a recipe as a cached DAG: ``lmforge run RECIPE --out runs/NAME [overrides]``.

A recipe is YAML with ``name``, ``description`` and ``stages``: a mapping from stage instance name to
that stage's options. The instance name is the stage kind unless the section says ``stage: KIND``
(so a recipe can hold two fine-tunes); fine-tuning methods are kinds ``finetune.<method>``
(``stage: finetune.classify``). Inputs written ``@name`` point at another instance of the run
(``@name/file`` at a file it wrote; list-valued inputs may hold several); they define the DAG. Every config is validated before the first stage starts. Each stage goes through
the run store: unchanged stages are cached, a changed value re-runs that stage and everything
downstream of it, and an interrupted run resumes where it stopped.

Overrides address instances: ``pretrain.max_steps=200`` or ``--pretrain.lr 1e-3`` (an instance name is
kept as written, hyphens included: ``eval-lora.max_tokens=64``). ``--dry_run`` plans without running:
each stage's ``main`` runs its checks and ``run_stage`` (under ``runstore.dry_run``) reports cached or
would run instead of working; nothing is written.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lmforge.config import ConfigError, from_dict, load_yaml, merge, opt, parse_overrides, to_dict
from lmforge.errors import LmforgeError
from lmforge.log import setup_logging
from lmforge.runstore import write_json_atomic

log = logging.getLogger(__name__)

RECIPE_KEYS = ("name", "description", "stages")


@dataclass
class Config:
    """Options of ``lmforge run`` itself (stage options come from the recipe and overrides)."""

    recipe: str = opt("recipes/tiny.yaml", "the recipe to run (YAML)", path=True)
    out: str = opt(
        "", "run directory; each stage writes OUT/<instance>/ (default: runs/<recipe name>)", path=True
    )
    force: bool = opt(False, "re-run every stage even when cached")
    only: list[str] = opt([], "run only these instances (their inputs must already be finished)")
    dry_run: bool = opt(
        False, "validate every stage's config and print the plan (cached or would run, inputs); run nothing"
    )


INPUTS: tuple[str, ...] = ()


@dataclass
class Step:
    """One stage instance of a planned run."""

    instance: str
    kind: str
    module: ModuleType
    config: Any
    needs: list[str] = field(default_factory=list)


def stage_module(kind: str, where: str) -> ModuleType:
    """The stage program for ``kind`` (``pretrain``, ``finetune.sft``) from the registry; a clear error
    naming the valid kinds otherwise."""
    from lmforge.stages.registry import GROUPS, STAGES, kinds

    cmd = STAGES.get(kind.replace(".", " "))
    if cmd is None or kind == "run" or " " in kind:
        valid = [k for k in kinds() if k.startswith(kind + ".")] if kind in GROUPS else kinds()
        near = difflib.get_close_matches(kind, valid, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise ConfigError(where, f"unknown stage kind '{kind}'; {hint}valid kinds: {', '.join(valid)}")
    return importlib.import_module(cmd.module)


def plan(recipe: dict[str, Any], overrides: dict[str, Any], run_dir: Path) -> list[Step]:
    """Validate the recipe with its overrides into an ordered list of steps (no work is done).

    Raises:
        ConfigError: unknown keys or stage kinds, invalid values, unknown or circular ``@`` inputs.
    """
    for key in recipe:
        if key not in RECIPE_KEYS:
            near = difflib.get_close_matches(str(key), RECIPE_KEYS, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(str(key), f"unknown recipe key; {hint}valid keys: {', '.join(RECIPE_KEYS)}")
    sections = recipe.get("stages") or {}
    if not isinstance(sections, dict) or not sections:
        raise ConfigError("stages", "a recipe needs a non-empty `stages` mapping of instance → options")
    for inst in overrides:
        if inst not in sections:
            near = difflib.get_close_matches(inst, list(sections), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(
                inst, f"override names no stage of this recipe; {hint}stages: {', '.join(sections)}"
            )
    steps: dict[str, Step] = {}
    for inst, section in sections.items():
        section = dict(section or {})
        if not isinstance(section, dict):
            raise ConfigError(inst, f"expected a mapping of options, got {section!r}")
        kind = section.pop("stage", inst)
        module = stage_module(kind, f"{inst}.stage")
        data = merge(section, overrides.get(inst, {}))
        data["out"] = str(run_dir / inst)
        cfg = from_dict(module.Config, data, prefix=inst)
        steps[inst] = Step(inst, kind, module, cfg)
    for step in steps.values():
        if getattr(step.module, "AFTER_ALL", False):
            step.needs = [
                s for s in steps if s != step.instance and not getattr(steps[s].module, "AFTER_ALL", False)
            ]
            continue
        for name in step.module.INPUTS:
            value = getattr(step.config, name)
            for ref in map(str, value if isinstance(value, (list, tuple)) else [value]):
                if not ref.startswith("@"):
                    continue
                target = ref[1:].split("/")[0]  # @name or @name/file
                if target not in steps and not (run_dir / target / "manifest.json").is_file():
                    raise ConfigError(
                        f"{step.instance}.{name}",
                        f"input {ref} names no stage of this recipe (stages: {', '.join(steps)})",
                    )
                if target in steps and target not in step.needs:
                    step.needs.append(target)
    return _toposort(steps)


def _toposort(steps: dict[str, Step]) -> list[Step]:
    order: list[Step] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ConfigError(name, f"circular inputs: {' → '.join(chain + [name])}")
        state[name] = 1
        for dep in steps[name].needs:
            visit(dep, chain + [name])
        state[name] = 2
        order.append(steps[name])

    for name in steps:  # recipe order breaks ties
        visit(name, [])
    return order


def main(cfg: Config, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the recipe ``cfg.recipe`` into ``cfg.out``; returns every stage's manifest in run order."""
    recipe = load_yaml(cfg.recipe)
    run_dir = Path(cfg.out or Path("runs") / str(recipe.get("name", Path(cfg.recipe).stem))).resolve()
    steps = plan(recipe, overrides or {}, run_dir)
    if cfg.only:
        unknown = [o for o in cfg.only if o not in {s.instance for s in steps}]
        if unknown:
            raise ConfigError("only", f"no such stage instance(s): {', '.join(unknown)}")
        steps = [s for s in steps if s.instance in cfg.only]
    if cfg.dry_run:
        return plan_status(steps, force=cfg.force)
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "recipe": str(Path(cfg.recipe).resolve()),
        "name": recipe.get("name", ""),
        "description": recipe.get("description", ""),
        "stages": [
            {"instance": s.instance, "stage": s.kind, "needs": s.needs, "config": to_dict(s.config)}
            for s in steps
        ],
        "status": "running",
    }
    write_json_atomic(run_dir / "run.json", record)
    log.info("run %s: %d stages → %s", record["name"], len(steps), run_dir)
    manifests = []
    start = time.perf_counter()
    for step in steps:
        manifests.append(step.module.main(step.config, force=cfg.force))
    record["status"] = "complete"
    record["duration_s"] = round(time.perf_counter() - start, 3)
    record["cached"] = [m["instance"] for m in manifests if m.get("cached_last")]
    write_json_atomic(run_dir / "run.json", record)
    log.info(
        "run %s finished in %.1fs (%d of %d stages cached)",
        record["name"],
        record["duration_s"],
        len(record["cached"]),
        len(steps),
    )
    return manifests


def plan_status(steps: list[Step], *, force: bool = False) -> list[dict[str, Any]]:
    """What ``lmforge run`` would do, stage by stage, without doing it (``runstore.dry_run``): each
    stage's own checks run (config, inputs that exist, memory, sandbox), nothing is written. A stage
    after one that would run is marked to run too, since its inputs may change."""
    from lmforge.runstore import dry_run

    entries: dict[str, dict[str, Any]] = {}
    with dry_run():
        for step in steps:
            entry = step.module.main(step.config, force=force)
            rerun = [n for n in step.needs if n in entries and entries[n]["status"] != "cached"]
            if entry["status"] == "cached" and rerun:
                why = f"after {', '.join(rerun)} (cached again if their outputs come out identical)"
                entry.update(status="would run", why=why)
            entry.update(
                instance=step.instance,
                stage=step.kind,
                needs=list(step.needs),
                inputs=[f"{n}={v}" for n, v in _inputs(step).items()],
            )
            entries[step.instance] = entry
    return list(entries.values())


def _inputs(step: Step) -> dict[str, Any]:
    """The step's declared input options that are set."""
    found = {}
    for name in step.module.INPUTS:
        value = getattr(step.config, name, None)
        if value:
            found[name] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return found


def print_plan(entries: list[dict[str, Any]]) -> None:
    """The dry run's plan as a table on standard output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lmforge run --dry_run: nothing was run or written")
    for col in ("#", "stage", "kind", "plan", "why", "inputs"):
        table.add_column(col, overflow="fold")
    for i, e in enumerate(entries, 1):
        style = "green" if e["status"] == "cached" else "yellow"
        status = f"[{style}]{e['status']}[/{style}]"
        table.add_row(str(i), e["instance"], e["stage"], status, e["why"], "; ".join(e["inputs"]) or "-")
    Console(width=max(100, Console().width)).print(table)
    runs = sum(e["status"] != "cached" for e in entries)
    print(f"{runs} of {len(entries)} stages would run, {len(entries) - runs} are cached")


USAGE = """usage: lmforge run [RECIPE.yaml] [--out DIR] [--force] [--dry_run] [--only INSTANCE ...] [instance.key=value ...] [-q|-v]

Run every stage of a recipe as a cached DAG through the run store.

options:
  RECIPE.yaml            the recipe (default recipes/tiny.yaml)
  --out DIR              run directory (default runs/<recipe name>); each stage writes DIR/<instance>/
  --force                re-run stages even when their config and inputs are unchanged
  --only INSTANCE        run only this instance (repeatable); its inputs must already be finished
  --dry_run              check every stage's config and print the plan (cached or would run, why,
                         inputs) without running or writing anything
  instance.key=value     override a stage option, e.g. pretrain.max_steps=200 or --pretrain.lr 1e-3
  -q, --quiet / -v       warnings only / debug log

A stage whose config and input hashes are unchanged prints that it is cached and is not re-run.
Changing one value re-runs that stage and everything downstream of it. Re-running an interrupted
run resumes it (training stages from their latest complete checkpoint).
`lmforge <stage> --help` lists each stage's options.
"""


def cli(argv: list[str]) -> int:
    """Command line of ``lmforge run``."""
    from lmforge.stages.invoke import print_summary, split_global_flags

    argv, quiet, verbose, want_help = split_global_flags(argv)
    if want_help:
        print(USAGE)
        return 0
    setup_logging(quiet=quiet, verbose=verbose)
    own: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.endswith((".yaml", ".yml")) and "=" not in a and "recipe" not in own:
            own["recipe"] = a
        elif a in ("--out", "--only") and i + 1 < len(argv):
            if a == "--out":
                own["out"] = argv[i + 1]
            else:
                own.setdefault("only", []).append(argv[i + 1])
            i += 1
        elif a.startswith("--out="):
            own["out"] = a.split("=", 1)[1]
        elif a == "--force":
            own["force"] = True
        elif a in ("--dry_run", "--dry-run"):
            own["dry_run"] = True
        else:
            rest.append(a)
        i += 1
    try:
        cfg = from_dict(Config, own)
        manifests = main(cfg, parse_overrides(rest, instances=True))
    except LmforgeError as exc:
        print(f"lmforge run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge run: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if cfg.dry_run:
        print_plan(manifests)
    else:
        print_summary(manifests)
    return 0
