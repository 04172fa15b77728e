"""lmforge: build language models end to end on the hardware you have.

The package is a small library (``data``, ``tokenizer``, ``model``, ``training``, ``inference``,
``eval``, ``report``) under stage programs (``lmforge.stages``), one importable ``main(config)`` per
CLI subcommand. Nothing heavy is imported here, so ``lmforge --help`` stays fast.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise.
torch's CPU kernels run on OpenMP, whose threads by default spin between parallel regions; when another
process shares the cores, a spinning thread burns the time slice its descheduled partner needs, and a
2-thread training step on a 2-core machine ran 7x slower than with passive waiting (1,151 vs 8,086
tokens/s, measured: docs/performance.md). The variable is read once, when torch loads its OpenMP
runtime, so it is set here, before any lmforge module imports torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
