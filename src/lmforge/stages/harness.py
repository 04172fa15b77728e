"""``lmforge harness``: run lm-evaluation-harness tasks on an lmforge checkpoint from the command line.

The harness's own CLI (``lm_eval --model ...``) cannot see a model that registers itself only when its
module is imported, so this command registers ``lmforge`` (``eval/harness.py``) and then runs the
harness's ``run`` command with ``--model lmforge --model_args checkpoint=MODEL`` and an include path
holding lmforge's shipped local tasks (``eval/harness_tasks/``: ``lmforge_python_mc``, 30 four-way
questions on Python), rendered to this installation's absolute paths. Nothing is downloaded:
``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set, so a Hub task fails with the harness's message
instead of fetching. Needs the ``eval`` extra (``lm-eval``). The same task for lmforge's own evaluator is
``eval/harness_tasks/python_mc.yaml``; both give the same accuracy (tested).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval" / "harness_tasks"

USAGE = """usage: lmforge harness --model CKPT --tasks NAME[,NAME...] [--include_path DIR] [lm_eval run options]

Run lm-evaluation-harness tasks on an lmforge checkpoint (a checkpoint directory or a training stage,
best checkpoint) with nothing downloaded.

options:
  --model CKPT           the checkpoint or training stage directory (e.g. runs/tiny/pretrain)
  --tasks NAMES          harness task names; lmforge ships lmforge_python_mc (local data)
  --include_path DIR     more task YAML files (your own local tasks), besides lmforge's
  --which best|last      which checkpoint of a training stage (default best)
  --batch_size N         sequences per forward pass (default 16)
  anything else          passed to `lm_eval run` as is: --num_fewshot 5, --limit 100,
                         --output_path results/, --log_samples, ...

Example:
  lmforge harness --model runs/tiny/pretrain --tasks lmforge_python_mc --num_fewshot 0
"""


def shipped_tasks(where: Path) -> Path:
    """Write lmforge's harness task files into ``where`` with their data paths made absolute."""
    for yaml_file in TASKS_DIR.glob("lmforge_*.yaml"):
        text = yaml_file.read_text(encoding="utf-8").replace("{here}", TASKS_DIR.as_posix())
        (where / yaml_file.name).write_text(text, encoding="utf-8")
    return where


def cli(argv: list[str]) -> int:
    """Command line of ``lmforge harness``."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    own = {"--model": "", "--which": "best", "--batch_size": "16", "--include_path": ""}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        key, _, value = argv[i].partition("=")
        if key in own:
            if not value:
                if i + 1 >= len(argv):
                    print(f"lmforge harness: error: {key} needs a value", file=sys.stderr)
                    return 2
                value, i = argv[i + 1], i + 1
            own[key] = value
        else:
            rest.append(argv[i])
        i += 1
    if not own["--model"]:
        print(
            "lmforge harness: error: --model CKPT is required (see lmforge harness --help)", file=sys.stderr
        )
        return 2
    if not Path(own["--model"]).expanduser().exists():
        print(f"lmforge harness: error: model: not found: {own['--model']}", file=sys.stderr)
        return 2
    try:
        from lm_eval.__main__ import cli_evaluate

        import lmforge.eval.harness  # noqa: F401  (registers the model "lmforge")
    except ImportError as exc:
        print(f"lmforge harness: error: needs lm-eval ({exc}): pip install -e '.[eval]'", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="lmforge-harness-") as tmp:
        include = ":".join(p for p in (str(shipped_tasks(Path(tmp))), own["--include_path"]) if p)
        model_args = f"checkpoint={Path(own['--model']).expanduser().resolve()},which={own['--which']}"
        model_args += f",batch_size={own['--batch_size']}"
        args = ["lm_eval", "run", "--model", "lmforge", "--model_args", model_args, "--include_path", include]
        saved = sys.argv
        sys.argv = args + rest
        try:
            cli_evaluate()
        except SystemExit as exc:  # argparse errors and the harness's own exits
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
        finally:
            sys.argv = saved
    return 0
