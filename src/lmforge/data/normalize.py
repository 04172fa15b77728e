"""Normalise document text: line endings, mojibake, control characters, Unicode NFC, whitespace.

``normalize_text`` is the pure function; ``Normalize`` is the pipeline step (``step(docs, drop)``,
see ``clean``) that applies it to every document and counts how many had mojibake repaired.

Mojibake (UTF-8 bytes decoded as Latin-1 / cp1252, e.g. ``cafÃ©`` for ``café``) is repaired with
ftfy's encoding fixer (Speer 2019, ``ftfy.fix_encoding``: only the encoding steps, so curly quotes,
ligatures and HTML entities are left alone). A regex for the markers such damage leaves
(``Ã`` or ``Â`` before another character, ``â€``, a stray byte-order mark) runs first, so clean
text never reaches ftfy and costs one regex scan.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.config import opt
from lmforge.data.document import Document

if TYPE_CHECKING:  # type names only
    from lmforge.data.clean import DropFn

__all__ = ["NormalizeConfig", "Normalize", "build", "normalize_text", "has_mojibake"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Unicode category Cc except \t and \n
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{4,}")  # three or more blank lines
_MOJIBAKE = re.compile("[ÃÂ][\x80-\xbf\u0152-\u2122]|â€|â\x80|ï»¿")


@dataclass
class NormalizeConfig:
    """Which normalisations ``normalize_text`` applies (all on by default)."""

    nfc: bool = opt(True, "compose text to Unicode NFC")
    fix_mojibake: bool = opt(True, "repair UTF-8 read as Latin-1/cp1252 (ftfy), only where markers show")
    strip_control: bool = opt(True, "remove control characters except \\n and \\t; lone surrogates → U+FFFD")
    normalize_whitespace: bool = opt(
        True, "strip trailing spaces per line, cap blank-line runs at two, strip the ends"
    )


_DEFAULT = NormalizeConfig()


def has_mojibake(text: str) -> bool:
    """True when ``text`` shows a typical marker of UTF-8 decoded as Latin-1/cp1252 (cheap precheck)."""
    return _MOJIBAKE.search(text) is not None


def _normalize(text: str, cfg: NormalizeConfig) -> tuple[str, bool]:
    """``normalize_text`` plus whether mojibake repair changed the text."""
    fixed = False
    if cfg.strip_control or cfg.normalize_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.fix_mojibake and has_mojibake(text):
        import ftfy

        repaired = ftfy.fix_encoding(text)
        fixed = repaired != text
        text = repaired
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
        text = _SURROGATE.sub("\ufffd", text)
    if cfg.nfc:
        text = unicodedata.normalize("NFC", text)
    if cfg.normalize_whitespace:
        text = _TRAILING_SPACE.sub("", text)
        text = _MANY_BLANK_LINES.sub("\n\n\n", text)
        text = text.strip()
    return text, fixed


def normalize_text(text: str, cfg: NormalizeConfig | None = None) -> str:
    """Normalise text so equal-looking documents compare equal.

    With every option of ``cfg`` on (the default), in order: ``\\r\\n`` and lone ``\\r`` become
    ``\\n``; mojibake is repaired where markers show; control characters other than ``\\n`` and
    ``\\t`` are removed; lone surrogates become U+FFFD; Unicode NFC; trailing whitespace is stripped
    from every line; runs of three or more blank lines become two; leading and trailing whitespace
    is stripped. Line endings are unified whenever ``strip_control`` or ``normalize_whitespace`` is
    on (either would otherwise mangle ``\\r``); with every option off the text is returned as is.
    The function is idempotent.
    """
    return _normalize(text, cfg or _DEFAULT)[0]


class Normalize:
    """Step: replace each document's text by ``normalize_text(text, cfg)``; drops nothing.

    ``counts()``: ``{"mojibake_fixed": documents whose text mojibake repair changed}``.
    """

    name = "normalize"  # shown in per-step statistics

    def __init__(self, cfg: NormalizeConfig | None = None) -> None:
        self.cfg = cfg or NormalizeConfig()
        self.mojibake_fixed = 0

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        for doc in docs:
            text, fixed = _normalize(doc.text, self.cfg)
            self.mojibake_fixed += fixed
            yield doc if text == doc.text else dataclasses.replace(doc, text=text)

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes)."""
        return {"mojibake_fixed": self.mojibake_fixed}


def build(cfg: NormalizeConfig) -> Normalize | None:
    """The step for ``cfg``, or None when every option is off (the step would change nothing)."""
    if not (cfg.nfc or cfg.fix_mojibake or cfg.strip_control or cfg.normalize_whitespace):
        return None
    return Normalize(cfg)
