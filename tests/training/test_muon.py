"""ShardedMuon: alone it is torch.optim.Muon bit for bit; on 2 gloo ranks it gives the same parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from lmforge.training.muon import ShardedMuon

ROOT = Path(__file__).resolve().parents[2]


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((8, 16), (16, 8), (12, 12), (4, 20))]


def _steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], n: int = 3) -> None:
    g = torch.Generator().manual_seed(7)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_alone_it_equals_torch_muon_exactly(one_torch_thread):
    a, b = _params(0), _params(0)
    kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", ns_steps=3)
    _steps(torch.optim.Muon(a, **kw), a)
    _steps(ShardedMuon(b, **kw), b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_two_ranks_end_each_step_with_the_single_process_parameters(tmp_path):
    """Each rank orthogonalises half the matrices; after the broadcasts both hold what one process has."""
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, torch, torch.distributed as dist
            import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_muon import _params, _steps
            from lmforge.training.muon import ShardedMuon
            dist.init_process_group("gloo")
            torch.set_num_threads(1)
            kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
            ps = _params(0)
            _steps(ShardedMuon(ps, **kw), ps)
            ref = _params(0)
            _steps(torch.optim.Muon(ref, **kw), ref)
            assert all(torch.equal(x, y) for x, y in zip(ps, ref)), "rank %d differs" % dist.get_rank()
            dist.destroy_process_group()
            """
        )
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
