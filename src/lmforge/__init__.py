"""lmforge: build language models end to end on the hardware you have.

The package is a small library (``data``, ``tokenizer``, ``model``, ``training``, ``inference``,
``eval``, ``report``) under stage programs (``lmforge.stages``), one importable ``main(config)`` per
CLI subcommand. Nothing heavy is imported here, so ``lmforge --help`` stays fast.
"""

__version__ = "0.1.0"
