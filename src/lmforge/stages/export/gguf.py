"""Export a decoder checkpoint as a GGUF file for llama.cpp-family tools (stage kind ``export.gguf``).

Writes ``<out>/model.gguf`` (llama architecture, ``interop.gguf_export``) beside the manifest, in f32 or
f16. The file is read back with ``gguf.GGUFReader`` and every tensor compared with what was written
(``max_tensor_diff``, 0 for f32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import opt
from lmforge.runstore import StageContext, run_config
from lmforge.stages.export import refuse_early

STAGE = "export.gguf"
VERSION = 1
GGUF_FILE = "model.gguf"


@dataclass
class Config:
    """Options of ``lmforge export gguf``."""

    model: str = opt("@pretrain", "a checkpoint directory, or a training stage directory", path=True)
    out: str = opt("", f"output stage directory (holds {GGUF_FILE})", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    dtype: Literal["f32", "f16"] = opt("f32", "tensor type of the weight matrices (norms stay f32)")


INPUTS = ("model",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Export (or return the cached result); returns the stage manifest."""
    refuse_early(cfg.model, cfg.out, cfg.checkpoint)
    return run_config(STAGE, cfg, INPUTS, work, version=VERSION, force=force)


def work(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Write the GGUF file and read it back."""
    import numpy as np

    from lmforge.interop.gguf_export import export_gguf, gguf_tensors, require_gguf
    from lmforge.model.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(ctx.inputs["model"], cfg.checkpoint)
    path = ctx.dir / GGUF_FILE
    model = export_gguf(ckpt, path, cfg.dtype)
    expected = gguf_tensors(model.state_dict(), model.config)
    reader = require_gguf().GGUFReader(str(path))
    read = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    if set(read) != set(expected):
        raise RuntimeError(f"{path}: tensors {sorted(read)} differ from those written {sorted(expected)}")
    diff = max(float(np.abs(read[n] - v.numpy()).max()) for n, v in expected.items())
    return {
        "tensors": len(read),
        "parameters": model.num_params(non_embedding=False),
        "bytes": path.stat().st_size,
        "max_tensor_diff": diff,
    }
