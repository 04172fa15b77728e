"""``lmforge serve``: serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page at ``/``.

Loads the checkpoint (or a training stage's best/last one), builds ``serve.app.create_app`` and runs it
under uvicorn until Ctrl-C. Endpoints, limits, auth and the batching design: docs/serve.md. The API key
is ``--api_key`` or, when that is empty, the ``LMFORGE_API_KEY`` environment variable; without either
the API is open (bind to 127.0.0.1, the default, unless that is what you want).

Not a run-store stage: a long-running server writes nothing and caches nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, fields_from, opt
from lmforge.serve.keys import KEY_ENV, resolve_api_key
from lmforge.training.options import device_option

STAGE = "serve"
INPUTS = ("model",)


@dataclass
class Config:
    """Options of ``lmforge serve``."""

    model: str = opt("", "a checkpoint directory, or a training stage directory", path=True)
    checkpoint: Literal["best", "last"] = opt("best", "which checkpoint of a training stage to use")
    name: str = opt("", "model id clients send ('' = the checkpoint's stage directory name)")
    host: str = opt("127.0.0.1", "interface to listen on (0.0.0.0 = every interface)")
    port: int = opt(8000, "TCP port (0 = any free port)")
    api_key: str = opt("", f"require 'Authorization: Bearer KEY' on /v1/* ('' = ${KEY_ENV}, else none)")
    max_prompt_tokens: int = opt(0, "longest prompt in tokens (0 = the model's context - 1)")
    max_tokens: int = opt(512, "most tokens a request may generate per choice")
    max_n: int = opt(8, "most choices per request (prompts x n)")
    max_inputs: int = opt(64, "most inputs per embeddings request")
    max_messages: int = opt(2048, "most messages per chat request (OpenAI's limit)")
    max_body_bytes: int = opt(1_000_000, "largest request body in bytes")
    max_concurrent: int = opt(64, "requests in flight at once; more get 429")
    max_batch: int = opt(32, "sequences generating at once in the batch; more wait their turn")
    threads: int = opt(0, "torch threads for the model (0 = torch's default)")
    device: str = device_option()

    def validate(self) -> None:
        check_host(self.host)
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535, got {self.port}")
        at_least(
            self,
            1,
            "max_tokens",
            "max_n",
            "max_inputs",
            "max_messages",
            "max_body_bytes",
            "max_concurrent",
            "max_batch",
        )
        at_least(self, 0, "max_prompt_tokens", "threads")


HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def check_host(host: str) -> None:
    """Refuse ``host`` unless it is an IP address or a host name that resolves (``localhost`` resolves from
    the hosts file; other names may ask DNS once). Dotted numbers that are no IPv4 address (``999.1.1.1``)
    are refused without a lookup.

    Raises:
        ConfigError: naming ``host``, with examples of valid values.
    """
    valid = "e.g. 127.0.0.1, 0.0.0.0 (every interface), ::1 or localhost"
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not host or len(host) > 253 or not HOST_NAME.fullmatch(host) or host.replace(".", "").isdigit():
        raise ConfigError("host", f"{host!r} is neither an IP address nor a host name ({valid})")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError("host", f"{host!r} does not resolve: {e} ({valid})") from None


def settings(cfg: Config) -> Any:
    """The app's ``ServeSettings`` from the config (the key from the environment when not given)."""
    from lmforge.serve.app import ServeSettings

    return fields_from(cfg, ServeSettings, api_key=resolve_api_key(cfg.api_key))


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Serve until interrupted; returns ``{"requests": n}`` (scheduler admissions)."""
    if not cfg.model:
        raise ConfigError("model", "a checkpoint is required (e.g. --model runs/tiny/pretrain)")
    import logging

    import uvicorn

    from lmforge.runtime import create_runtime
    from lmforge.serve.app import create_app, load_served_model

    rt = create_runtime(cfg.device, "fp32", seed=0, threads=cfg.threads)
    served = load_served_model(cfg.model, cfg.checkpoint, device=str(rt.device))
    app = create_app(served, settings(cfg))
    s = app.state.settings
    logging.getLogger(__name__).info(
        "serving %s (%s) on http://%s:%d — chat page at /, API at /v1 (%s)",
        served.name,
        served.arch,
        cfg.host,
        cfg.port,
        "API key required" if s.api_key else "no API key",
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)
    return {"requests": app.state.scheduler.stats["admitted"]}


def cli(argv: list[str]) -> int:
    """``lmforge serve [RECIPE.yaml] [options]``: parse options like every stage, then serve."""
    from lmforge.stages.invoke import invoke_interactive

    return invoke_interactive("serve", sys.modules[__name__], argv)
