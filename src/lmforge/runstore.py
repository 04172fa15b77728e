"""The run store: stage directories, manifests, content hashes, caching and atomic completion.

A run is a directory; each stage instance owns ``<run>/<instance>/``. :func:`run_stage` wraps a
stage's work function and gives every stage the same guarantees:

- **Caching.** The cache key hashes the stage kind and version, the config (path fields left out) and
  the content hash of every input. A finished stage with the same key is not run again.
- **Atomic completion.** Work happens in ``<instance>.partial/``; ``manifest.json`` (status
  ``complete``) is written last and the directory is renamed into place, so an interrupted stage
  never looks finished.
- **Resume.** A ``.partial`` directory whose key matches is handed back to the work function
  (``ctx.resumed``), so training stages continue from their latest complete checkpoint.
- **Lineage.** The manifest records the resolved config, inputs with hashes, output files with
  hashes, flat metrics, code version and timings (format: docs/architecture.md).

Inputs are written ``@name`` to mean "the stage instance ``name`` of the same run" (the parent of
the stage's output directory), ``@name/file`` for a file inside it; anything else is a plain path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.config import hash_view, to_dict
from lmforge.errors import ConfigError, InputError
from lmforge.log import TENSORBOARD_DIR, MetricsWriter, add_file_handler, remove_handler

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"  # a tokenizer stage's output and its copy in every checkpoint
FORMAT = 1
PARTIAL_SUFFIX = ".partial"
KEY_FILE = ".cache_key"
# Files that describe a run of the stage rather than its product: not hashed as outputs.
NOT_OUTPUTS = {MANIFEST, "stage.log", "metrics.jsonl", KEY_FILE}
NOT_OUTPUT_DIRS = {TENSORBOARD_DIR}  # a record of the run (event files carry wall times), not a product


# --------------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON form of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_outputs(directory: Path, volatile: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": n, "sha256": hex}}`` for every product file under ``directory``.

    ``volatile`` names files (relative paths) that describe the run rather than its product (timings,
    comparisons); they are left out, so they never trigger re-runs downstream.
    """
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if (
            not p.is_file()
            or p.name in NOT_OUTPUTS
            or rel in volatile
            or rel.split("/")[0] in NOT_OUTPUT_DIRS
        ):
            continue
        out[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def input_hash(path: Path) -> str:
    """Content hash of an input: a finished stage's recorded outputs, or a plain file/directory."""
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return sha256_json(manifest["outputs"])
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return sha256_json(hash_outputs(path))
    raise InputError(f"input not found: {path}")


# --------------------------------------------------------------------------------------------------
# manifests


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The manifest of a *finished* stage directory, or None (missing, unreadable, or not complete)."""
    p = Path(stage_dir) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return m if m.get("status") == "complete" else None


def read_json(path: Path, what: str = "") -> Any:
    """The JSON document in ``path``.

    Raises:
        InputError: ``cannot read [what] PATH: why`` when the file is missing, unreadable or not JSON.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {what + ' ' if what else ''}{path}: {exc}") from exc


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


_CODE_VERSION: dict[str, str] | None = None


def code_version() -> dict[str, str]:
    """Versions that produced an artifact: lmforge, its git commit when run from a checkout, python, torch."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        info = {"lmforge": __version__, "python": platform.python_version()}
        try:
            src = Path(__file__).resolve().parent
            rev = subprocess.run(
                ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if rev.returncode == 0:
                info["git"] = rev.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            from importlib.metadata import version

            info["torch"] = version("torch")
        except Exception:  # noqa: BLE001 - torch absent is fine here
            pass
        _CODE_VERSION = info
    return dict(_CODE_VERSION)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# running a stage


@dataclass
class StageContext:
    """What a stage's work function gets besides its config.

    Attributes:
        stage: stage kind (``pretrain``); instance: its directory name in the run.
        dir: the working directory (``<instance>.partial``); write every output here.
        run_dir: the run directory (parent of the stage directory).
        inputs: resolved input directories/files by config field name.
        resumed: True when ``dir`` holds the work of an interrupted attempt with the same cache key.
    """

    stage: str
    instance: str
    dir: Path
    run_dir: Path
    inputs: dict[str, Path]
    resumed: bool = False
    metrics: MetricsWriter | None = field(default=None, repr=False)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to this stage's ``metrics.jsonl``."""
        if self.metrics is None:
            self.metrics = MetricsWriter(self.dir / "metrics.jsonl")
        self.metrics.write(record)


def config_inputs(cfg: Any, *fields: str) -> dict[str, Any]:
    """Run-store inputs named by config ``fields`` (a stage's ``INPUTS``), in order: a list field gives
    ``field0``, ``field1``, ...; any other field is included under its own name when it is set. An
    input whose default is a stage of the run (``model: "@pretrain"``) is required: emptied, it is a
    ``ConfigError`` before anything is created."""
    found: dict[str, Any] = {}
    for name in fields:
        value = getattr(cfg, name)
        if isinstance(value, (list, tuple)):
            found.update({f"{name}{i}": v for i, v in enumerate(value)})
        elif value:
            found[name] = value
        elif str(type(cfg).__dataclass_fields__[name].default).startswith("@"):
            raise ConfigError(name, "is required: a path, or an @stage reference to a stage of the run")
    return found


def run_config(
    stage: str,
    cfg: Any,
    fields: tuple[str, ...],
    work: Callable[[Any, StageContext], dict[str, float]],
    **options: Any,
) -> dict[str, Any]:
    """``run_stage`` as most stages call it: writing to ``cfg.out``, with the inputs its config ``fields``
    name (the stage's ``INPUTS``, through ``config_inputs``); ``options`` are ``run_stage``'s (``version``,
    ``force``, ``volatile``, ``fingerprint``)."""
    return run_stage(stage, cfg, out=cfg.out, inputs=config_inputs(cfg, *fields), work=work, **options)


def resolve_ref(ref: str | Path, out: Path) -> Path:
    """``@name`` → ``<run dir>/name`` (the run dir is the parent of ``out``), ``@name/file`` → a file in
    it; a plain path as given."""
    s = str(ref)
    if s.startswith("@"):
        return out.parent / s[1:]
    return Path(s).expanduser()


_DRY_RUN: ContextVar[bool] = ContextVar("lmforge_dry_run", default=False)


@contextmanager
def dry_run() -> Iterator[None]:
    """Inside this block ``run_stage`` does no work and writes nothing: it checks the inputs, computes
    the cache key and returns a plan entry (``status`` ``"cached"`` or ``"would run"``, with ``why``)
    instead of a manifest (``lmforge run --dry_run``)."""
    token = _DRY_RUN.set(True)
    try:
        yield
    finally:
        _DRY_RUN.reset(token)


def _plan_entry(stage: str, out: Path, status: str, why: str) -> dict[str, Any]:
    return {"stage": stage, "instance": out.name, "status": status, "why": why, "dry_run": True}


def run_stage(
    stage: str,
    cfg: Any,
    *,
    out: str | Path,
    inputs: dict[str, str | Path],
    work: Callable[[Any, StageContext], dict[str, float]],
    version: int = 1,
    fingerprint: dict[str, Any] | None = None,
    force: bool = False,
    volatile: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``work(cfg, ctx)`` as the stage ``stage`` writing to ``out``, or return its cached manifest.

    Args:
        stage: stage kind (module name) recorded in the manifest.
        cfg: the stage's typed config (saved resolved, hashed without its path fields).
        out: the stage directory to produce.
        inputs: input name → ``@instance`` reference or path; each must exist, and a referenced stage
            must have finished.
        work: does the stage's job inside ``ctx.dir`` and returns flat numeric metrics.
        version: bump when the stage's output format or algorithm changes, to invalidate caches.
        fingerprint: extra cache-key material for inputs that are not files (e.g. builtin corpora).
        force: run even when a finished stage with the same key exists.
        volatile: output files that describe the run (timings, comparisons) and are not hashed as
            products, so they do not invalidate downstream stages.

    Returns:
        The manifest, with ``cached_last`` telling whether this call was a cache hit.

    Raises:
        ConfigError: no output directory (``out`` empty): before anything is created.
        InputError: an input is missing or its stage has not finished.
    """
    if not str(out):
        name = stage.split(".")[-1]
        raise ConfigError("out", f"an output directory is required (e.g. --out runs/x/{name})")
    out = Path(out).expanduser().resolve()
    if not out.name:
        raise InputError(f"not a usable output directory: {out}")
    run_dir = out.parent
    resolved: dict[str, Path] = {}
    for name, ref in inputs.items():
        p = resolve_ref(ref, out).resolve()
        producer = resolve_ref(str(ref).split("/")[0], out).resolve()  # @name of @name/file
        if str(ref).startswith("@") and read_manifest(producer) is None:
            if _DRY_RUN.get():  # the producer is planned before this stage: it would exist by then
                return _plan_entry(stage, out, "would run", f"its input {ref} is not built yet")
            raise InputError(
                f"{stage} needs input '{name}' = {ref} at {producer}, which has not finished; "
                f"run that stage first (or `lmforge run` the whole recipe)"
            )
        if not p.exists():
            raise InputError(f"{stage}: input '{name}' not found: {p}")
        resolved[name] = p
    input_hashes = {name: input_hash(p) for name, p in resolved.items()}
    key = sha256_json(
        {
            "stage": stage,
            "version": version,
            "lmforge": __version__,
            "config": hash_view(cfg),
            "inputs": input_hashes,
            "fingerprint": fingerprint or {},
        }
    )

    rank = int(os.environ.get("RANK", 0))
    done = read_manifest(out)
    if _DRY_RUN.get():
        if force:
            return _plan_entry(stage, out, "would run", "--force")
        if done is None:
            return _plan_entry(stage, out, "would run", "not run yet")
        if done.get("cache_key") != key:
            return _plan_entry(stage, out, "would run", "its config, inputs or code changed")
        return _plan_entry(stage, out, "cached", "unchanged since its last run")
    if done is not None and done.get("cache_key") == key and not force:
        log.info("%s: cached (%s), skipping", out.name, out)
        if rank == 0:
            done["cached_last"] = True
            write_json_atomic(out / MANIFEST, done)
        return done

    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if rank != 0:
        # another rank of a torchrun job: rank 0 owns the directories and the manifest; this rank only
        # works (the work function synchronises with rank 0 before reading or writing anything)
        ctx = StageContext(stage=stage, instance=out.name, dir=partial, run_dir=run_dir, inputs=resolved)
        metrics = work(cfg, ctx)
        return {"stage": stage, "instance": out.name, "status": "worker", "rank": rank, "metrics": metrics}
    resumed = False
    if partial.exists():
        old_key = (partial / KEY_FILE).read_text().strip() if (partial / KEY_FILE).is_file() else ""
        if old_key == key and not force:
            resumed = True
            log.info("%s: resuming the interrupted attempt in %s", out.name, partial)
        else:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / KEY_FILE).write_text(key + "\n")

    ctx = StageContext(
        stage=stage, instance=out.name, dir=partial, run_dir=run_dir, inputs=resolved, resumed=resumed
    )
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "stage": stage,
        "instance": out.name,
        "status": "running",
        "cache_key": key,
        "config": to_dict(cfg),
        "inputs": {n: {"path": str(resolved[n]), "hash": input_hashes[n]} for n in resolved},
        "fingerprint": fingerprint or {},
        "code": code_version(),
        "started": _now(),
    }
    handler = add_file_handler(partial / "stage.log")
    start = time.perf_counter()
    cpu_start, energy_start = cpu_seconds(), rapl_energy_uj()
    log.info("%s: running stage %s → %s", out.name, stage, out)
    try:
        metrics = work(cfg, ctx)
        ctx.log_metrics({"final": True, **_check_metrics(stage, metrics)})
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended=_now())
        manifest["duration_s"] = round(time.perf_counter() - start, 3)
        write_json_atomic(partial / MANIFEST, manifest)
        raise
    finally:
        if ctx.metrics is not None:
            ctx.metrics.close()
        remove_handler(handler)
    manifest["metrics"] = _check_metrics(stage, metrics)
    manifest["outputs"] = hash_outputs(partial, volatile)
    manifest.update(status="complete", ended=_now(), cached_last=False)
    manifest["duration_s"] = round(time.perf_counter() - start, 3)
    manifest.update(_resources(cpu_start, energy_start))
    write_json_atomic(partial / MANIFEST, manifest)
    _swap_into_place(partial, out)
    log.info("%s: done in %.1fs", out.name, manifest["duration_s"])
    return manifest


def cpu_seconds() -> tuple[float, float]:
    """``(this process, its waited-for children)`` CPU seconds so far, user + system, every thread."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


RAPL_ROOT = Path("/sys/class/powercap")


def rapl_energy_uj() -> int | None:
    """Summed ``energy_uj`` of the top-level RAPL packages (``intel-rapl:N``), or None when unreadable."""
    total, found = 0, False
    for zone in sorted(RAPL_ROOT.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, dram) are inside their package's count
            continue
        try:
            total += int((zone / "energy_uj").read_text())
            found = True
        except (OSError, ValueError):
            return None
    return total if found else None


def _resources(cpu_start: tuple[float, float], energy_start: int | None) -> dict[str, Any]:
    """What the stage consumed: ``cpu_s`` (this process, all threads), ``cpu_children_s`` (child
    processes it waited for: tokenizer and data workers), and ``energy_j`` from RAPL when readable (the
    whole machine's packages, so other processes' use is included; a counter wrap reads as missing)."""
    own, kids = cpu_seconds()
    found: dict[str, Any] = {
        "cpu_s": round(own - cpu_start[0], 3),
        "cpu_children_s": round(kids - cpu_start[1], 3),
    }
    energy = rapl_energy_uj()
    if energy is not None and energy_start is not None and energy >= energy_start:
        found["energy_j"] = round((energy - energy_start) / 1e6, 3)
    return found


def _check_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise TypeError(f"{stage}: work function must return a dict of metrics, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{stage}: metric {k!r} must be a number, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            log.warning("%s: metric %s is %s; recorded as null", stage, k, v)
            out[k] = None  # type: ignore[assignment]
        else:
            out[k] = v
    return out


def _swap_into_place(partial: Path, out: Path) -> None:
    """Rename the finished ``partial`` directory to ``out``, replacing an older result."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    (out / KEY_FILE).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def stage_dirs(run_dir: Path) -> list[Path]:
    """Finished stage directories of a run (those with a complete manifest), sorted by start time."""
    found = []
    for p in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX):
            m = read_manifest(p)
            if m is not None:
                found.append((m.get("started", ""), p))
    return [p for _, p in sorted(found)]
