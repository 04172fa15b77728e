"""Code-generation scoring: completions become programs, run in the sandbox, counted into pass@k.

For each problem (a ``Doc`` with ``code_prefix`` and ``test``, ``eval/loaders_code.py``) and each of its
``n`` completions:

1. the completion is cut before the first stop string of ``until`` (the engine already stops there;
   a hand-written completion may not), and, for a task without a code prefix (MBPP), stripped of
   leading whitespace;
2. the program ``code_prefix + completion + "\\n\\n" + test`` runs in ``sandbox.run_python`` under
   ``limits``, ``workers`` at a time (each in its own process), followed by one line that writes a
   random token (fresh for every program) to standard error: a program passes only when it exits with
   status 0 *and* that token is the last line it wrote, so a completion that ends the process before
   the tests finish (``sys.exit(0)``, ``os._exit(0)``, a ``SystemExit`` raised from the function the
   tests call) fails instead of passing — the cheapest reward hack for GRPO on code. (A program that
   reads its own source could still find the token and write it; the sandbox bounds what it can do,
   not how it is scored.)
3. a problem with ``c`` passing programs out of ``n`` contributes ``pass_at_k(n, c, k)``
   (``metrics.py``) for every ``k <= n``.

Metrics: ``pass@k`` for each requested ``k``, and the fraction of all programs per sandbox status
(``frac_passed``, ``frac_failed``, ``frac_timeout``, ``frac_error``), so a run shows whether its
failures are wrong answers or programs stopped by the sandbox. ``score_completions`` is the part that
needs no model: the tests feed it canonical solutions and wrong ones. ``code_reward`` is the same
judgement as a plain reward function (1.0 when the program passes, else 0.0) for reinforcement learning
on code (``lmforge align grpo task=...``).

Sampling settings of a code task (``samples``, ``temperature``, ``top_p``, ``ks``) come from the task
(built-in defaults, YAML task files) and may be overridden by the eval stage (``with_sampling``);
``check_sampling`` is the one rule both obey: every ``k <= samples``, greedy (temperature 0) means one
sample (greedy samples are all alike), ``0 < top_p <= 1``.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError
from lmforge.eval.metrics import mean_pass_at_k
from lmforge.eval.records import Doc
from lmforge.eval.sandbox import DEFAULT_LIMITS, STATUSES, Limits, SandboxResult, run_python

if TYPE_CHECKING:
    from lmforge.eval.tasks import Task

log = logging.getLogger(__name__)


def check_sampling(
    samples: int, temperature: float, top_p: float | None, ks: Sequence[int], *, where: str = ""
) -> None:
    """Raise ``ConfigError`` (keys prefixed ``where``) unless the settings make sense (module docstring)."""
    at = f"{where}." if where else ""
    if samples < 1:
        raise ConfigError(f"{at}samples", f"must be >= 1, got {samples}")
    if temperature < 0:
        raise ConfigError(f"{at}temperature", f"must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{at}top_p", f"must be in (0, 1], got {top_p}")
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"{at}ks", f"need one or more k >= 1, got {list(ks)}")
    if max(ks) > samples:
        raise ConfigError(
            f"{at}ks", f"pass@{max(ks)} needs at least {max(ks)} samples, got samples={samples}"
        )
    if temperature == 0 and samples > 1:
        raise ConfigError(
            f"{at}temperature",
            f"temperature 0 (greedy) gives {samples} identical samples: set samples 1 or temperature > 0",
        )


def with_sampling(
    task: Task,
    *,
    samples: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    ks: Sequence[int] = (),
) -> Task:
    """``task`` with the given sampling settings replacing its own (0 / None / empty: keep the task's),
    checked together (``check_sampling``, keys named as the eval stage's options).

    Raises:
        ConfigError: ``task`` is not a code task, or the resulting settings do not make sense.
    """
    if task.kind != "code":
        raise ConfigError("samples", f"task {task.name} is a {task.kind} task; sampling options are for code")
    new = replace(
        task,
        samples=samples or task.samples,
        temperature=task.temperature if temperature is None else temperature,
        top_p=task.top_p if top_p is None else top_p,
        ks=tuple(ks) or task.ks,
    )
    if samples and not ks:  # pass@k for the task's ks that the new sample count still allows
        new = replace(new, ks=tuple(k for k in task.ks if k <= new.samples) or (1,))
    try:
        check_sampling(new.samples, new.temperature, new.top_p, new.ks)
    except ConfigError as e:
        raise ConfigError(e.key, f"task {task.name}: {e.message}") from None
    return new


def trim_completion(text: str, until: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any string of ``until``."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


def build_program(doc: Doc, completion: str, until: Sequence[str] = (), token: str = "") -> str:
    """The program a completion of ``doc`` is judged by (module docstring, steps 1-2); with ``token``,
    followed by the line that writes it to standard error once the tests have run."""
    body = trim_completion(completion, until)
    if not doc.code_prefix:
        body = body.lstrip()
    program = f"{doc.code_prefix}{body}\n\n{doc.test}"
    if token:
        program += f"\n\nimport sys as _lmforge_sys\n_lmforge_sys.stderr.write('\\n{token}\\n')\n"
    return program


def judge(
    doc: Doc, completion: str, until: Sequence[str], limits: Limits, unsafe_exec: bool
) -> SandboxResult:
    """Run the program of one completion; a status-0 exit that skipped the end of the tests (the token
    line never ran) is ``failed`` (module docstring, step 2)."""
    token = f"lmforge-tests-done-{secrets.token_hex(16)}"
    result = run_python(build_program(doc, completion, until, token), limits, unsafe_exec=unsafe_exec)
    if result.passed and result.stderr.rstrip().rpartition("\n")[2] != token:
        return replace(result, status="failed", reason="exited with status 0 before its tests finished")
    return result


def score_completions(
    docs: Sequence[Doc],
    completions: Sequence[Sequence[str]],
    *,
    ks: Sequence[int] = (1,),
    until: Sequence[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    workers: int = 2,
    unsafe_exec: bool = False,
) -> dict[str, Any]:
    """Run every completion of every problem; returns ``{"metrics": {...}, "results": [[SandboxResult]]}``.

    Args:
        docs: the problems.
        completions: per problem, its ``n`` completions (every problem the same ``n`` or not).
        ks: the k of pass@k (each at most the smallest ``n``).
        until: stop strings the completions are cut at.
        limits: sandbox limits per program.
        workers: programs run at once.
        unsafe_exec: run the programs without the sandbox (``sandbox.run_python``).

    Raises:
        ValueError: ``docs`` and ``completions`` differ in length, or a problem has no completion.
        SandboxUnavailable: no usable sandbox and ``unsafe_exec`` is off.
    """
    if len(docs) != len(completions):
        raise ValueError(f"docs and completions differ in length: {len(docs)} vs {len(completions)}")
    if any(not c for c in completions):
        raise ValueError("every problem needs at least one completion")
    jobs = [(d, c) for d, cs in zip(docs, completions) for c in cs]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        flat: list[SandboxResult] = list(pool.map(lambda job: judge(*job, until, limits, unsafe_exec), jobs))
    results, at = [], 0
    for cs in completions:
        results.append(flat[at : at + len(cs)])
        at += len(cs)
    counts = [(len(rs), sum(r.passed for r in rs)) for rs in results]
    metrics = mean_pass_at_k(counts, ks)
    statuses = Counter(r.status for r in flat)
    metrics.update({f"frac_{s}": statuses[s] / len(flat) for s in STATUSES})
    return {"metrics": metrics, "results": results}


def code_reward(
    doc: Doc,
    completion: str,
    *,
    until: Sequence[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    unsafe_exec: bool = False,
) -> float:
    """1.0 when ``completion`` makes ``doc``'s tests pass in the sandbox, else 0.0 (failed, timed out,
    stopped); ``unsafe_exec`` runs it without the sandbox."""
    return float(judge(doc, completion, until, limits, unsafe_exec).passed)


def status_table(results: Sequence[Sequence[SandboxResult]], limit: int = 10) -> dict[str, Any]:
    """A report table of the first ``limit`` programs that did not pass: problem, sample, status, reason."""
    rows = [
        [i, j, r.status, r.reason[:120]]
        for i, rs in enumerate(results)
        for j, r in enumerate(rs)
        if not r.passed
    ][:limit]
    return {
        "title": "programs that did not pass (first ones)",
        "header": ["problem", "sample", "status", "reason"],
        "rows": rows,
    }
