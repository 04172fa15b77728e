"""Collect human rankings of sampled replies (stage kind ``align.collect``).

The model samples ``n_responses`` replies to each prompt of ``prompts`` through the inference engine
(``temperature``, ``top_k``, ``top_p``, ``max_new_tokens``; row ``i`` seeded ``seed + i``); identical
replies are merged and a prompt left with fewer than two distinct replies is dropped. The replies are
written to ``responses.jsonl`` first: a restarted (or ``--force``\\ d, or re-configured) collection
with the same model, prompts and sampling settings reuses them instead of sampling again, and keeps
the rankings already stored. Then a ranking page is served (``serve.ranking``) at ``host:port``
(``port: 0`` = any free port; the address is logged and written to ``server.json`` while serving);
people rank the replies there and every ranking is appended to ``rankings.jsonl``, the stage's output,
which ``align reward`` / ``align dpo`` read (``train: ["@collect/rankings.jsonl"]``).

The stage finishes when the store holds ``max_rankings`` rankings, or on Ctrl-C (SIGINT) or SIGTERM:
either way the manifest is written with the rankings collected so far.

Access: ``api_key`` (or, when empty, the ``LMFORGE_API_KEY`` variable, as ``lmforge serve``) makes the
page's ``/api/*`` require that key (``serve.ranking``); the link to hand to annotators, with the key as
``?key=``, is printed on stderr and never logged, and the key is kept out of the manifest (``(set)``
stands in for it), ``stage.log``, ``server.json`` and the cache key. Binding a non-loopback address
without a key logs a warning: anyone who reaches it can read the replies and submit rankings.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import StageContext, run_stage, sha256_json
from lmforge.serve.keys import KEY_ENV, resolve_api_key
from lmforge.training.options import device_option

logger = logging.getLogger(__name__)

STAGE = "align.collect"
VERSION = 1
RESPONSES = "responses.jsonl"
RANKINGS = "rankings.jsonl"
SERVER = "server.json"
KEY_SET = "(set)"  # what the manifest records instead of the key


@dataclass
class Config:
    """Options of ``lmforge align collect``."""

    model: str = opt("@sft", "the policy: a checkpoint directory or a training stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    prompts: str = opt("", "prompts: .txt (one per line) or .jsonl (prompt / messages / preference records)", path=True)  # fmt: skip
    out: str = opt("", "output stage directory", path=True)
    max_prompts: int = opt(0, "use at most this many distinct prompts (0 = all)")
    n_responses: int = opt(4, "replies sampled per prompt (the ones a person ranks)")
    max_new_tokens: int = opt(64, "tokens per reply at most")
    temperature: float = opt(0.9, "sampling temperature")
    top_k: int = opt(50, "sample among the k most likely tokens (0 = all)")
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off)")
    seed: int = opt(0, "sampling seed")
    host: str = opt("127.0.0.1", "address the ranking page listens on (0.0.0.0 = every interface)")
    port: int = opt(8765, "port of the ranking page (0 = any free port)")
    max_rankings: int = opt(0, "finish once the store holds this many rankings (0 = until Ctrl-C)")
    api_key: str = opt(
        "",
        f"require this key on the page's /api/* ('' = ${KEY_ENV}, else none); the printed link carries it",
        cache=False,
    )
    device: str = device_option()
    threads: int = opt(0, "CPU threads for torch (0 = one per core)", cache=False)

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts", "a prompts file is required (--prompts prompts.txt)")
        if self.n_responses < 2:
            raise ConfigError(
                "n_responses", f"must be >= 2 (a ranking compares replies), got {self.n_responses}"
            )
        at_least(self, 1, "max_new_tokens")
        if self.temperature <= 0:
            raise ConfigError(
                "temperature", f"must be > 0 (greedy replies are all alike), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        at_least(self, 0, "max_prompts", "top_k", "max_rankings")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535, got {self.port}")


INPUTS = ("model", "prompts")


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Sample the replies and serve the ranking page until done (or return the cached result)."""
    found = {"model": cfg.model, "prompts": cfg.prompts}
    key = resolve_key(cfg)
    recorded = dataclasses.replace(cfg, api_key=KEY_SET if key else "")  # the manifest never holds it
    serve = functools.partial(work, api_key=key)
    return run_stage(STAGE, recorded, out=cfg.out, inputs=found, work=serve, version=VERSION, force=force)


def resolve_key(cfg: Config) -> str:
    """The key the page requires: ``cfg.api_key``, else ``$LMFORGE_API_KEY``, else none ('')."""
    return resolve_api_key(cfg.api_key)


def warn_if_exposed(host: str, api_key: str) -> bool:
    """Log a warning (and return True) when ``host`` is not a loopback address and no key is set."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if loopback or api_key:
        return False
    logger.warning(
        "the ranking page listens on %s without an API key: anyone who can reach it can read the "
        "replies and submit rankings; set --api_key (or $%s), or bind 127.0.0.1",
        host,
        KEY_ENV,
    )
    return True


def generation_key(cfg: Config, ctx: StageContext) -> str:
    """What the sampled replies depend on: the model and prompts (by content) and the sampling settings."""
    from lmforge.runstore import input_hash

    settings = ("checkpoint", "max_prompts", "n_responses", "max_new_tokens", "temperature", "top_k", "top_p", "seed")  # fmt: skip
    return sha256_json(
        {
            "model": input_hash(ctx.inputs["model"]),
            "prompts": input_hash(ctx.inputs["prompts"]),
            **{k: getattr(cfg, k) for k in settings},
        }
    )


def sample_items(cfg: Config, ctx: StageContext) -> tuple[list[Any], int]:
    """``(items, dropped prompts)``: ``n_responses`` distinct replies to each prompt, as ``RankItem``\\ s."""
    from lmforge.data.preferences import read_prompts
    from lmforge.data.supervised import log_problems
    from lmforge.serve.ranking import RankItem
    from lmforge.training.judge import sample_replies

    problems: list = []
    prompts = read_prompts(ctx.inputs["prompts"], problems)[: cfg.max_prompts or None]
    log_problems(problems, "prompts")
    if not prompts:
        raise ConfigError("prompts", f"no prompts in {ctx.inputs['prompts']}")
    n = cfg.n_responses
    completions, _, _ = sample_replies(
        cfg,
        ctx.inputs["model"],
        prompts,
        n,
        top_k=cfg.top_k or None,
        top_p=cfg.top_p if cfg.top_p < 1 else None,
    )
    texts = [c.text.strip() for c in completions]
    items, dropped = [], 0
    for p, prompt in enumerate(prompts):
        distinct = list(dict.fromkeys(texts[p * n : (p + 1) * n]))
        if len(distinct) < 2:
            dropped += 1
            continue
        items.append(RankItem(f"p{p}", prompt, {f"r{k}": t for k, t in enumerate(distinct)}))
    logger.info("%d prompts × %d samples → %d items to rank (%d dropped: < 2 distinct replies)", len(prompts), n, len(items), dropped)  # fmt: skip
    return items, dropped


def load_or_sample(cfg: Config, ctx: StageContext) -> tuple[list[Any], int]:
    """The items of ``responses.jsonl`` when it was sampled with the same ``generation_key``, here or in
    the finished stage directory this run replaces (whose rankings are carried over); else new samples."""
    import json
    import shutil

    from lmforge.runstore import write_json_atomic
    from lmforge.serve.ranking import RankItem

    key = generation_key(cfg, ctx)
    here = ctx.dir / RESPONSES
    previous = ctx.run_dir / ctx.instance
    for where in (ctx.dir, previous):
        meta = where / "generation.json"
        if (where / RESPONSES).is_file() and meta.is_file() and json.loads(meta.read_text())["key"] == key:
            if where != ctx.dir:
                for name in (RESPONSES, RANKINGS, "generation.json"):
                    if (where / name).is_file():
                        shutil.copyfile(where / name, ctx.dir / name)
                logger.info("continuing the collection of %s (same replies, rankings kept)", previous)
            rows = [json.loads(line) for line in here.read_text(encoding="utf-8").splitlines()]
            info = json.loads((ctx.dir / "generation.json").read_text())
            items = [RankItem(r["item"], r["prompt"], r["responses"]) for r in rows]
            logger.info("%d items from %s (not sampled again)", len(items), here)
            return items, int(info["dropped"])
    kept = previous / RANKINGS
    if kept.is_file() and kept.stat().st_size and not (ctx.dir / RANKINGS).is_file():
        raise ConfigError(
            "out",
            f"{previous} holds rankings of replies sampled with another model, prompts or sampling "
            "settings; people's rankings are never discarded: choose a new --out (or move that directory)",
        )
    items, dropped = sample_items(cfg, ctx)
    text = "".join(
        json.dumps({"item": i.id, "prompt": i.prompt, "responses": i.responses}, ensure_ascii=False) + "\n"
        for i in items
    )
    tmp = here.with_name(here.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(here)
    write_json_atomic(ctx.dir / "generation.json", {"key": key, "dropped": dropped})
    return items, dropped


def work(cfg: Config, ctx: StageContext, *, api_key: str = "") -> dict[str, float]:
    """Sample (or reuse) the replies, serve the ranking page until done, report what was collected.

    ``api_key`` (resolved by ``main``; ``cfg.api_key`` holds only a stand-in) guards ``/api/*``."""
    import signal
    import socket
    import threading
    import time
    from urllib.parse import urlencode

    import uvicorn

    from lmforge.runstore import write_json_atomic
    from lmforge.serve.ranking import RankingStore, create_ranking_app

    start = time.perf_counter()
    items, dropped = load_or_sample(cfg, ctx)
    if not items:
        raise ConfigError(
            "prompts", "no prompt got two distinct replies; raise temperature or max_new_tokens"
        )
    sampled_s = time.perf_counter() - start
    holder: dict[str, Any] = {}

    def finish() -> None:
        holder["server"].should_exit = True

    store = RankingStore(
        items,
        ctx.dir / RANKINGS,
        meta={"model": str(ctx.inputs["model"])},
        limit=cfg.max_rankings,
        on_limit=finish,
    )
    already = store.count
    if cfg.max_rankings and already >= cfg.max_rankings:
        logger.info("the store already holds %d rankings (max_rankings %d)", already, cfg.max_rankings)
    else:
        title = f"lmforge: rank replies of {Path(ctx.inputs['model']).name}"
        app = create_ranking_app(store, title=title, api_key=api_key)
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        sock.listen(128)  # connections made before uvicorn runs wait in the backlog
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        holder["server"] = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        write_json_atomic(ctx.dir / SERVER, {"url": url, "pid": os.getpid(), "auth": bool(api_key)})
        warn_if_exposed(str(host), api_key)
        logger.info(
            "ranking page: %s — %d items × up to %d replies, %d rankings stored; %s; %s",
            url,
            len(items),
            cfg.n_responses,
            already,
            "API key required (link with the key on stderr)" if api_key else "no API key",
            f"finishes at {cfg.max_rankings} rankings or on Ctrl-C"
            if cfg.max_rankings
            else "Ctrl-C finishes",
        )
        if api_key:  # printed, not logged: stage.log stays free of the key
            print(
                f"ranking page for annotators: {url}?{urlencode({'key': api_key})}",
                file=sys.stderr,
                flush=True,
            )
        main_thread = threading.current_thread() is threading.main_thread()
        old_term = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
        try:
            holder["server"].run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down
            logger.info("interrupted: finishing with %d rankings", store.count)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, old_term)
            sock.close()
            (ctx.dir / SERVER).unlink(missing_ok=True)
    return {
        "rankings": store.count,
        "rankings_this_session": store.session,
        "annotators": store.annotators(),
        "ranked_items": sum(1 for a in store.ranked.values() if a),
        "items": len(items),
        "responses": sum(len(i.responses) for i in items),
        "dropped_prompts": dropped,
        "sample_time_s": sampled_s,
    }


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM finishes the collection as Ctrl-C does (instead of killing the process)."""
    raise KeyboardInterrupt
