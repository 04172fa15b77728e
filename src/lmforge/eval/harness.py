"""lm-evaluation-harness adapter: run harness tasks on lmforge checkpoints.

``pip install lmforge[eval]`` (``lm-eval``), then, offline, with lmforge's shipped local task::

    lmforge harness --model runs/tiny/pretrain --tasks lmforge_python_mc
    # or from Python
    import lmforge.eval.harness, lm_eval
    lm_eval.simple_evaluate(model="lmforge", model_args="checkpoint=runs/tiny/pretrain,batch_size=16",
                            tasks=["my_local_task"], task_manager=lm_eval.tasks.TaskManager(include_path=DIR))

The plain ``lm_eval`` command cannot see the model (it registers when this module is imported):
``lmforge harness`` (``stages/harness.py``) registers it and runs the harness CLI. Every request goes through ``eval.tasks.LM``, the same
code our own evaluator uses, so a harness task and the equivalent lmforge task give the same number
(tested on a local task file). ``checkpoint`` is a checkpoint directory or a training stage
(``which=best|last``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval.api.model import LM as HarnessLM
from lm_eval.api.registry import register_model

from lmforge.eval.tasks import LM
from lmforge.runstore import TOKENIZER_FILE


@register_model("lmforge")
class LmforgeLM(HarnessLM):
    """An lmforge decoder checkpoint as an lm-evaluation-harness model.

    Args:
        checkpoint: checkpoint directory or training stage directory.
        which: ``best`` or ``last`` checkpoint of a training stage.
        batch_size: sequences per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ...
    """

    def __init__(
        self, checkpoint: str, which: str = "best", batch_size: int | str = 16, device: str = "auto", **_: Any
    ):
        super().__init__()
        import torch

        from lmforge.model.checkpoint import load_model, resolve_checkpoint
        from lmforge.runtime import create_runtime
        from lmforge.tokenizer.train import load_tokenizer, special_id

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "auto"  # the harness CLI passes cuda:0 by default
        rt = create_runtime(device or "auto", "fp32", seed=0)
        ckpt = resolve_checkpoint(Path(checkpoint).expanduser(), which)
        model, _ = load_model(ckpt, device=rt.device)
        tok = load_tokenizer(ckpt / TOKENIZER_FILE)
        size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.lm = LM(model.eval(), tok, bos_id=special_id(tok, "<|bos|>"), batch_size=size)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LmforgeLM:
        """As the harness's, except that a key given in ``--model_args`` (``batch_size=16``) wins over the
        harness's own option of that name instead of being passed twice (a ``TypeError``)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> LmforgeLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def from_lm(cls, lm: LM) -> LmforgeLM:
        """Wrap an already loaded ``eval.tasks.LM`` (tests, notebooks)."""
        self = cls.__new__(cls)
        HarnessLM.__init__(self)
        self.lm = lm
        return self

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        return self.lm.loglikelihood([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        return self.lm.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests: list) -> list[str]:
        out = []
        for r in requests:  # one by one: each request may carry its own stop strings and length
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            out += self.lm.generate([context], until, int(kwargs.get("max_gen_toks", 256)))
        return out


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
