"""Evaluation: language-model metrics (lm.py), tasks with k-shot prompts (tasks.py, fewshot.py,
loaders.py), generation, pass@k and NER metrics (metrics.py), code generation run in a sandbox
(codegen.py, sandbox.py), classification metrics and classic baselines (classification.py,
classic_text.py, static_embeddings.py), probes, the harness adapter.

``evaluate_lm`` and ``unigram_entropy`` are re-exported lazily, so importing a torch-free module of
this package (``loaders``, ``metrics``) does not load torch.
"""

from typing import Any

__all__ = ["evaluate_lm", "unigram_entropy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lmforge.eval import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'lmforge.eval' has no attribute {name!r}")
