"""Package-level behaviour: what importing lmforge sets up."""

from __future__ import annotations

import os
import subprocess
import sys


def _policy_after_import(env: dict[str, str]) -> str:
    code = "import os, lmforge; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_after_import(env) == "PASSIVE"
    assert _policy_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_decoding_commands_let_openmp_threads_spin_and_others_do_not():
    """``generate`` and ``chat`` set ``GOMP_SPINCOUNT`` before torch loads (a user's count is kept);
    once torch is loaded the call says it is too late and changes nothing; training commands do not."""
    from lmforge.runtime import DECODE_SPIN
    from lmforge.stages.registry import STAGES

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    spin = "import os; from lmforge.runtime import spin_for_decoding as s; print(s(), os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(spin, env) == f"True {DECODE_SPIN}"
    assert _run(spin, {**env, "GOMP_SPINCOUNT": "7"}) == "True 7"
    assert _run("import torch; " + spin, env) == "False None"
    decoding = {name for name, cmd in STAGES.items() if cmd.decodes}
    assert decoding == {"generate", "chat"}
    cli = "import os, sys; from lmforge import cli; cli.main(sys.argv[1:]); print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(cli.replace("sys.argv[1:]", "['generate', '--help']"), env).endswith(str(DECODE_SPIN))
    assert _run(cli.replace("sys.argv[1:]", "['pretrain', '--help']"), env).endswith("None")
