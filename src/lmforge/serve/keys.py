"""The API key of lmforge's HTTP servers (``lmforge serve``'s ``/v1/*``, ``align collect``'s ranking
page): the ``--api_key`` option, else the ``LMFORGE_API_KEY`` variable, else none. No imports beyond
the standard library, so stage modules can use it in their option help."""

from __future__ import annotations

import os

KEY_ENV = "LMFORGE_API_KEY"


def resolve_api_key(given: str) -> str:
    """``given`` when set, else ``$LMFORGE_API_KEY``, else '' (no key: the API is open)."""
    return given or os.environ.get(KEY_ENV, "")
