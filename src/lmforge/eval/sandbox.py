"""Run model-written Python in a bubblewrap sandbox: the kernel, not Python, keeps it in.

``run_python(code, limits)`` runs ``code`` as ``/sandbox/program.py`` with the same interpreter
(``python -I``) inside ``bwrap`` (bubblewrap) and returns a ``SandboxResult`` whose ``status`` is

- ``passed``: the program exited with status 0;
- ``failed``: it raised (an ``AssertionError`` from a test, a ``TypeError``, an ``OSError`` because the
  sandbox has no network or a read-only file system, ...) or exited non-zero: ``reason`` is the
  exception's last traceback line;
- ``timeout``: it ran past ``Limits.wall_s`` (wall clock) or ``Limits.cpu_s`` (CPU time, ``SIGXCPU``);
- ``error``: it was stopped by a limit (memory, file size), killed by a signal (a segfault), or could
  not be started.

What the kernel enforces (docs/security.md, "Code sandbox", names the tests behind each point):

- namespaces: new PID, network, IPC, UTS and cgroup namespaces (``--unshare-pid`` ...); the network
  namespace has only its own loopback, so nothing outside is reachable; the PID namespace shows only
  the sandbox's processes, so none outside can be signalled;
- files: a new mount namespace whose root is an empty tmpfs made read-only, holding read-only binds of
  ``/usr`` (``/bin``, ``/lib*``, ``/sbin`` as on the host), ``/etc/ld.so.cache``, the interpreter's
  prefixes (``sys.base_prefix``, ``sys.prefix``: the venv), a fresh ``/proc`` and a minimal ``/dev``
  (read-only but for its device nodes). The only writable place is ``/sandbox`` (also ``/tmp``), a tmpfs of
  ``4 * file_mb`` MB that vanishes with the run. Nothing else of the host (home, project tree) exists;
- identity: as root, the program runs as a fresh unprivileged uid/gid (2,000,000 + ..., one per run,
  no groups, no capabilities): bwrap keeps only ``CAP_SETUID``/``CAP_SETGID`` and the interpreter
  switches uid, which drops them, before it reads the program. No user namespace as root: it would
  map the sandbox to uid 0 outside, which the kernel exempts from ``RLIMIT_NPROC``. Not as root, the sandbox is
  a new user namespace (``--unshare-user``) over the caller's uid, with no capabilities. Either way
  ``no_new_privs`` is set, so setuid programs gain nothing;
- limits (``setrlimit`` in the sandboxed interpreter before the program runs): ``RLIMIT_CPU``
  (``cpu_s``), ``RLIMIT_AS`` (``memory_mb``, per process), ``RLIMIT_NPROC`` (``processes``, counted in
  the sandbox only), ``RLIMIT_FSIZE`` (``file_mb``), ``RLIMIT_CORE`` 0;
- lifetime: ``--die-with-parent``, ``--new-session``; on the wall-clock limit the sandbox's init
  (PID 1 of its namespace) is killed and the kernel kills every process in the namespace, so a child
  that called ``setsid`` and forked again does not outlive the run. When the program ends, its init
  exits and the same happens.

Standard output and error go to files outside the sandbox (bounded by ``RLIMIT_FSIZE``); the result
keeps their first / last 4 KB.

Where bwrap is missing or cannot create namespaces (``sandbox_problem``, probed once per process),
``run_python`` raises ``SandboxUnavailable`` naming the option ``unsafe_exec``; with
``unsafe_exec=True`` the program runs in a plain subprocess (fresh temporary directory, same rlimits,
nothing else: it can read and write the caller's files and use the network) after a loud warning.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ConfigError

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")

# exit codes the runner uses to say why it stopped the program (a program's own codes are 1-127)
_EXIT_MEMORY, _EXIT_FSIZE, _EXIT_SETUP = 71, 72, 73
_OUTPUT_KEEP = 4096
_UID_BASE = 2_000_000  # fresh uids as root: 2,000,000 + 1000 * (pid % 1000) + counter
_counter = itertools.count()
_WORK = "/sandbox"  # the program's directory inside the sandbox (not a host path it must show)
_SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # top-level dirs bound read-only
_warned_unsafe = False


@dataclass(frozen=True)
class Limits:
    """Per-sample limits."""

    wall_s: float = 10.0  # wall-clock seconds, then the sandbox's processes are killed
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    processes: int = 16  # processes of the program (RLIMIT_NPROC inside the sandbox)
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE), stdout/stderr included

    def validate(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass
class SandboxResult:
    """Outcome of one run (``status`` in ``STATUSES``); ``isolation`` is ``"bwrap"`` or ``"unsafe"``."""

    status: str
    reason: str = ""
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    isolation: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(ConfigError):
    """No usable sandbox here, and ``unsafe_exec`` is off: the message says why and both ways out."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(
            "unsafe_exec",
            f"model-written code is only run in a sandbox, and bubblewrap cannot be used here ({problem}). "
            "Install it (apt-get install bubblewrap, or dnf install bubblewrap) and allow user namespaces "
            "(a container needs --privileged or user namespaces enabled; docs/security.md), or set "
            "unsafe_exec=true to run the code without a sandbox (resource limits only), "
            "only if you trust it.",
        )

    def __reduce__(self) -> tuple:
        return (SandboxUnavailable, (self.problem,))


def run_python(code: str, limits: Limits = DEFAULT_LIMITS, *, unsafe_exec: bool = False) -> SandboxResult:
    """Run ``code`` as ``program.py`` under ``limits`` in the sandbox (module docstring).

    Args:
        code: the whole program (for code generation: prompt + completion + tests + the test call).
        limits: resource limits.
        unsafe_exec: run without the sandbox (a plain subprocess with the rlimits): only for trusted code.

    Raises:
        ValueError: a bad limit.
        SandboxUnavailable: no usable bubblewrap and ``unsafe_exec`` is off.
    """
    limits.validate()
    if not unsafe_exec:
        require_sandbox()
    else:
        _warn_unsafe(once=True)
    return _run_in_temp(code, limits, unsafe_exec)


def require_sandbox(unsafe_exec: bool = False) -> None:
    """Raise ``SandboxUnavailable`` unless bubblewrap works here; with ``unsafe_exec``, warn instead
    (stages call this while validating their config, before any work)."""
    if unsafe_exec:
        _warn_unsafe(once=False)
        return
    problem = sandbox_problem()
    if problem:
        raise SandboxUnavailable(problem)


@functools.cache
def sandbox_problem() -> str:
    """Why bubblewrap cannot sandbox a program here ("" when it can): found once, by running one."""
    if sys.platform != "linux":
        return f"bubblewrap needs Linux, this is {sys.platform}"
    if _bwrap() is None:
        return "bwrap not found on PATH or in /usr/bin"
    r = _run_in_temp("print('ok')", Limits(wall_s=30), False)
    if r.passed and r.stdout.strip() == "ok":
        return ""
    detail = next((x for x in reversed(r.stderr.strip().splitlines()) if x.strip()), r.reason)
    return f"a test run failed: {detail}"


def _run_in_temp(code: str, limits: Limits, unsafe: bool) -> SandboxResult:
    base = Path(tempfile.mkdtemp(prefix="lmforge-sandbox-"))  # 0700: the program's output lands here
    try:
        (base / "work").mkdir()
        (base / "work" / "program.py").write_text(code, encoding="utf-8")
        return _run(base, limits, unsafe)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _warn_unsafe(*, once: bool) -> None:
    global _warned_unsafe
    if once and _warned_unsafe:
        return
    _warned_unsafe = True
    log.warning(
        "UNSAFE: unsafe_exec is on: model-written code runs WITHOUT a sandbox, as uid %d, with only "
        "resource limits; it can read and write your files, use the network and start programs",
        os.getuid(),
    )


def _bwrap() -> str | None:
    return shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)


def _run(base: Path, limits: Limits, unsafe: bool) -> SandboxResult:
    """Run ``base/work/program.py``; its standard output and error go to ``base/stdout``, ``base/stderr``."""
    root = os.geteuid() == 0
    setup = {
        "uid": -1,
        "work": str(base / "work") if unsafe else _WORK,
        "cpu": limits.cpu_s,
        "mem": limits.memory_mb * 2**20,
        "nproc": limits.processes,
        "fsize": limits.file_mb * 2**20,
        "codes": [_EXIT_MEMORY, _EXIT_FSIZE, _EXIT_SETUP],
    }
    runner = [sys.executable, "-I", "-c", _RUNNER]
    fds: list[int] = []
    info = None
    if unsafe:
        if not root:  # RLIMIT_NPROC counts every process of the user
            setup["nproc"] += _user_processes()
        argv = runner + [json.dumps(setup)]
        env = {"PATH": "/usr/bin:/bin", "HOME": setup["work"], "LANG": "C.UTF-8"}
    else:
        if root:  # switched to by the runner, inside the sandbox
            setup["uid"] = _UID_BASE + 1000 * (os.getpid() % 1000) + next(_counter) % 1000
        else:  # bwrap's own init is a process of the sandbox's user too
            setup["nproc"] += 1
        program_fd = os.open(base / "work" / "program.py", os.O_RDONLY)
        info, info_w = os.pipe()
        fds = [program_fd, info_w]
        argv = _bwrap_argv(root, limits, program_fd, info_w) + runner + [json.dumps(setup)]
        env = None  # bwrap --clearenv
    start = time.monotonic()
    try:
        with open(base / "stdout", "wb") as fo, open(base / "stderr", "wb") as fe:
            proc = subprocess.Popen(
                argv,
                cwd=base / "work",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
                pass_fds=fds,
            )
    except BaseException:
        if info is not None:
            os.close(info)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    init = _sandbox_init(info) if info is not None else None
    try:
        rc = proc.wait(timeout=limits.wall_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        rc = _stop(proc, init)
    if unsafe:
        _kill_group(proc.pid)  # children left behind in the session (not those that left it)
    elif rc > 128:  # bwrap reports a signal as 128 + its number
        rc = -(rc - 128)
    seconds = time.monotonic() - start
    stdout = (base / "stdout").read_bytes()[:_OUTPUT_KEEP].decode("utf-8", "replace")
    stderr = (base / "stderr").read_bytes()[-_OUTPUT_KEEP:].decode("utf-8", "replace")
    status, reason = _classify(rc, timed_out, stderr, limits)
    mode = "unsafe" if unsafe else "bwrap"
    log.debug("sandbox %s (%s) in %.2fs: %s", status, mode, seconds, reason)
    return SandboxResult(status, reason, rc, stdout, stderr, seconds, mode)


def _bwrap_argv(root: bool, limits: Limits, program_fd: int, info_fd: int) -> list[str]:
    """The ``bwrap`` command line up to the program (module docstring)."""
    argv = [_bwrap() or "bwrap", "--die-with-parent", "--new-session", "--info-fd", str(info_fd)]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--hostname", "sandbox"]
    if root:  # no user namespace (it would map to uid 0 outside); the runner drops to a fresh uid
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"]
    for name in _SYSTEM:
        path = Path("/", name)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for path in ["/etc/ld.so.cache", *_python_dirs()]:
        for parent in reversed(Path(path).parents[:-1]):  # 0755: bwrap would make them 0700
            argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind-try", path, path]
    size = 4 * limits.file_mb * 2**20
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(size), "--tmpfs", _WORK, "--symlink", _WORK, "/tmp"]
    argv += ["--perms", "0644", "--file", str(program_fd), f"{_WORK}/program.py"]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", _WORK, "--clearenv"]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", _WORK), ("LANG", "C.UTF-8"), ("TMPDIR", "/tmp")):
        argv += ["--setenv", key, value]
    return argv + ["--"]


def _python_dirs() -> list[str]:
    """The interpreter's prefixes (and its directory) not already under a bound system directory."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    dirs.add(os.path.dirname(os.path.abspath(sys.executable)))
    system = tuple(os.path.realpath(f"/{n}") + "/" for n in _SYSTEM)
    keep = sorted(d for d in dirs if not (d + "/").startswith(system))
    return [d for d in keep if not any(d != o and d.startswith(o + "/") for o in keep)]


def _sandbox_init(info_fd: int) -> int | None:
    """The host pid of the sandbox's PID 1, from bwrap's ``--info-fd`` (None if bwrap failed first)."""
    with os.fdopen(info_fd, "rb") as f:
        text = f.read()
    try:
        return int(json.loads(text)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _classify(rc: int, timed_out: bool, stderr: str, limits: Limits) -> tuple[str, str]:
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    if timed_out:
        return "timeout", f"wall-clock limit {limits.wall_s}s"
    if rc == 0:
        return "passed", ""
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        return "timeout", f"CPU-time limit {limits.cpu_s}s (signal {-rc})"
    if rc == _EXIT_MEMORY:
        return "error", f"memory limit {limits.memory_mb} MB"
    if rc == _EXIT_FSIZE:
        return "error", f"file-size limit {limits.file_mb} MB"
    if rc == _EXIT_SETUP or (rc == 1 and last.startswith("bwrap: ")):
        return "error", f"sandbox setup failed: {last}"
    if rc < 0:
        return "error", f"killed by signal {signal.Signals(-rc).name}"
    return "failed", last or f"exit status {rc}"


def _stop(proc: subprocess.Popen, init: int | None) -> int:
    """Kill a run on the wall clock; returns its exit status once nothing of it is left.

    With bwrap, ``init`` (PID 1 of the sandbox's namespace) is killed and bwrap waited for: the kernel
    kills every process of the namespace and PID 1 is reaped only after they are gone, so waiting for
    bwrap (its parent) waits for all of them. Killing bwrap first would return before that."""
    if init is not None:
        try:
            os.kill(init, signal.SIGKILL)
            return proc.wait(timeout=10)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    _kill_group(proc.pid)  # unsafe mode; or bwrap's own group (--die-with-parent does the rest)
    return proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _user_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count or 256


# The interpreter's first code: ``python -I -c _RUNNER setup-json`` in the program's directory. It
# drops to the fresh uid (as root), sets the limits, then runs the program and turns how it ended
# into an exit status. Source text, not a module: the sandbox cannot see lmforge.
_RUNNER = r"""
import json, os, resource, sys, traceback
cfg = json.loads(sys.argv[1])
MEMORY, FSIZE, SETUP = cfg["codes"]
work = cfg["work"]
try:
    if cfg["uid"] >= 0:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem"], cfg["mem"]))
    source = open(work + "/program.py", encoding="utf-8").read()
    code = compile(source, "program.py", "exec")
except Exception as e:
    if isinstance(e, SyntaxError):
        traceback.print_exc(limit=0)
        sys.exit(1)
    print("lmforge-sandbox: setup: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    sys.exit(SETUP)

def finish(status):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(status if 0 <= status < 128 else 1)  # 256 must not read as 0, nor 137 as a signal

sys.dont_write_bytecode = True
sys.argv = ["program.py"]
sys.path.insert(0, work)
namespace = {"__name__": "__main__", "__file__": work + "/program.py", "__builtins__": __builtins__}
try:
    exec(code, namespace)
except SystemExit as e:
    code = e.code
    if code is None or code == 0:
        finish(0)
    if not isinstance(code, int):
        print(code, file=sys.stderr)
    finish(code if isinstance(code, int) else 1)
except MemoryError:
    finish(MEMORY)
except BaseException as e:
    if isinstance(e, OSError) and e.errno == 27:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
        finish(FSIZE)
    traceback.print_exc()
    finish(1)
finish(0)
"""
