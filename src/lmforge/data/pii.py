"""Scrub personal data and secrets from text, replacing each span with a typed placeholder.

Kinds and placeholders: ``email`` → ``<EMAIL>``, ``phone`` → ``<PHONE>``, ``ip`` → ``<IP_ADDRESS>``,
``credit_card`` → ``<CREDIT_CARD>``, ``iban`` → ``<IBAN>``, ``secret`` → ``<SECRET>``, ``address`` →
``<ADDRESS>``. Detection is regular expressions plus validation, in the manner of BigCode's PII
redaction for The Stack (Li et al. 2023, StarCoder, section 4) and Presidio's recognisers:

- credit cards: 13-19 digits (optionally grouped by spaces or dashes) with a known issuer prefix
  and a valid Luhn checksum (ISO/IEC 7812);
- IBANs: country code, check digits and the country's exact length, valid ISO 7064 mod-97 check;
- IPv4: four octets in 0..255 not touching further dots or digits (so ``3.11.7`` and OIDs are
  safe), not after "version", "v", "section", "Chrome/" and the like, not a CIDR network
  (``10.0.0.0/8``), not all single digits (``2.7.2.2`` is a version); IPv6 validated with
  ``ipaddress``. Addresses that identify no one are left alone: loopback, unspecified, multicast,
  reserved (incl. netmasks such as 255.255.255.0), 0.0.0.0/8, IPv4 link-local, and the
  documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32);
- phones: international ``+CC`` / ``00CC`` numbers of 8-15 digits, North-American
  ``(415) 555-0134`` / ``415-555-0134`` / ``415.555.0134`` (NANP area and exchange codes start
  2-9), and trunk-prefix national numbers of 10-12 digits (``020 7946 0958``, ``01 23 45 67 89``);
  bare digit runs are never phones, and neither are 7-digit local numbers;
- secrets: AWS access key ids, GitHub (``ghp_``, ``github_pat_``), Slack (``xox[abprs]-``),
  Stripe (``sk_live_``/``rk_live_``/``sk_test_``), Google (``AIza``), PEM private key blocks, JWTs,
  ``Bearer`` tokens, and values assigned to names like ``api_key``/``token``/``secret`` when the
  value looks random (>= 16 characters, letters and digits, Shannon entropy >= 3 bits/char);
- addresses: US-style street addresses (``123 Main Street``, ``42 W 5th Ave, Apt 4B``, optional
  ``City, ST 12345``) with a capitalised street name and a common suffix, and ``P.O. Box`` numbers;
  lower-case or non-US addresses are not found.

Overlapping matches resolve by ``PRIORITY`` (secret, email, credit_card, iban, ip, phone,
address), so a card number is never also a phone. Measured precision and recall (labelled set in ``tests/data/test_pii.py``)
and the replacements made on ``builtin:python-docs``: ``docs/data-quality.md``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lmforge.config import opt
from lmforge.data.clean import DropFn
from lmforge.data.document import Document
from lmforge.errors import ConfigError

__all__ = ["KINDS", "PLACEHOLDERS", "PIIConfig", "PIIScrubber", "build", "find", "scrub"]

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip": "<IP_ADDRESS>",
    "credit_card": "<CREDIT_CARD>",
    "iban": "<IBAN>",
    "secret": "<SECRET>",
    "address": "<ADDRESS>",
}
KINDS = tuple(PLACEHOLDERS)
# overlapping spans: the kind earlier here wins
PRIORITY = ("secret", "email", "credit_card", "iban", "ip", "phone", "address")

Span = tuple[int, int, str]  # start, end, kind

# ---------------------------------------------------------------------------------------------
# email

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)

_RETINA = re.compile(r"@\d(?:\.\d)?x\.", re.IGNORECASE)


def _emails(text: str) -> Iterator[Span]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        if _RETINA.search(m.group()):
            continue  # icon@2x.png is a file name
        yield m.start(), m.end(), "email"


# ---------------------------------------------------------------------------------------------
# credit cards

_CARD = re.compile(r"(?<![\w.,+-])\d(?:[ -]?\d){12,18}(?![\w+]|[.,-]\d)")
# issuer prefix → allowed lengths (Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay)
_CARD_BRANDS = tuple(
    (re.compile(prefix), lengths)
    for prefix, lengths in (
        (r"4", (13, 16, 19)),
        (r"5[1-5]|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)", (16,)),
        (r"3[47]", (15,)),
        (r"3(?:0[0-5]|[689])", (14, 16, 17, 18, 19)),
        (r"6(?:011|5|4[4-9])", (16, 17, 18, 19)),
        (r"35(?:2[89]|[3-8])", (16, 17, 18, 19)),
        (r"62", (16, 17, 18, 19)),
    )
)


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        if not any(p.match(digits) and len(digits) in lengths for p, lengths in _CARD_BRANDS):
            continue
        groups = re.split(r"[ -]", raw)
        if len(groups) > 1 and (len(set(re.findall(r"[ -]", raw))) > 1 or min(map(len, groups)) < 3):
            continue  # mixed separators or tiny groups: a list of numbers, not a card
        if luhn_ok(digits):
            yield m.start(), m.end(), "credit_card"


# ---------------------------------------------------------------------------------------------
# IBAN (ISO 13616)

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN = re.compile(r"(?<![\w-])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})")


def iban_ok(iban: str) -> bool:
    """True when ``iban`` (no spaces) has its country's length and a valid mod-97 check."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        # take exactly the country's length of alphanumerics, then require a boundary
        end, count = m.start(), 0
        while end < m.end() and count < length:
            if text[end] != " ":
                count += 1
            end += 1
        if count != length or (end < len(text) and (text[end].isalnum() or text[end] == "_")):
            continue
        if iban_ok(text[m.start() : end].replace(" ", "")):
            yield m.start(), end, "iban"


# ---------------------------------------------------------------------------------------------
# IP addresses

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\w)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
# "version 1.2.3.4", "Chrome/120.0.0.0", "section 4.1.2.3": a version or a section, not an address
_NOT_HOST_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|release|rev|v|section|sections|chapter|table|figure|fig|step|rule|item"
    r"|clause|article|paragraph|§)\.?\s*[:=]?\s*[\"'(\[]?|[a-z]/)$"
)
_CIDR = re.compile(r"/\d{1,3}\b")  # 10.0.0.0/8 names a network, not a host
_DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _identifies_host(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for addresses naming no one: loopback, unspecified, multicast, reserved, docs ranges."""
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_reserved:
        return False
    if addr.is_link_local and addr.version == 4:
        return False
    return not any(addr in net for net in _DOC_NETS if net.version == addr.version)


def _ips(text: str) -> Iterator[Span]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if _NOT_HOST_BEFORE.search(text, max(0, m.start() - 12), m.start()) or _CIDR.match(text, m.end()):
                continue
            octets = [int(o) for o in m.group().split(".")]
            if octets[0] == 0 or max(octets) < 10:
                continue  # 0.0.0.255 is a hostmask; 2.7.2.2 a version (and 8.8.8.8 a public resolver)
            if _identifies_host(ipaddress.IPv4Address(m.group())):
                yield m.start(), m.end(), "ip"
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            cand = m.group()
            if sum(c in "0123456789abcdefABCDEF" for c in cand) < 4 or not any(c.isdigit() for c in cand):
                continue  # "1::2" (a slice), "add::be" (a path in code)
            try:
                addr = ipaddress.IPv6Address(cand)
            except ValueError:
                continue
            if not _CIDR.match(text, m.end()) and _identifies_host(addr.ipv4_mapped or addr):
                yield m.start(), m.end(), "ip"


# ---------------------------------------------------------------------------------------------
# phone numbers

_PHONE_INTL = re.compile(
    r"(?<![\w+./])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}(?![\w]|[.-]\d)"
)
_PHONE_NANP = re.compile(
    r"(?<![\w.+/-])(?:1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d([ .-]))[2-9]\d\d(?(1)\1|[ .-])\d{4}(?![\w]|[.-]\d)"
)
_PHONE_TRUNK = re.compile(
    r"(?<![\w.+/-])(?:0[1-9](?:[ .-]\d\d){4}|0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}|0\d{3,4} \d{5,8})(?![\w]|[.-]\d)"
)


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE_INTL.finditer(text):
        number = m.group()
        groups = re.split(r"[ .()-]+", number)
        if not 8 <= sum(c.isdigit() for c in number) <= 15 or len(groups[-1]) < 2 or number.count(".") == 1:
            continue  # +35236450.6 is a signed decimal, not a phone
        yield m.start(), m.end(), "phone"
    for m in _PHONE_NANP.finditer(text):
        yield m.start(), m.end(), "phone"
    for m in _PHONE_TRUNK.finditer(text):
        if 10 <= sum(c.isdigit() for c in m.group()) <= 12:
            yield m.start(), m.end(), "phone"


# ---------------------------------------------------------------------------------------------
# secrets

_SECRET_TOKENS = re.compile(
    r"(?<![\w/+])(?:"
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JSON Web Token
    r")(?![\w-])"
)
_PEM = re.compile(
    r"-----BEGIN[A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY(?: BLOCK)?-----|\n\s*\n|\Z)"
)
_ASSIGNED = re.compile(
    r"(?i)\b[\w-]*(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|access[_-]?key|private[_-]?key|credentials?)"
    r"[\w-]*[\"']?\s*(?::=|=>|[:=])\s*[\"']?([A-Za-z0-9_\-+/=.~]{16,})(?![A-Za-z0-9_\-+/=.~(\[])"
)
_BEARER = re.compile(r"\bBearer\s+([A-Za-z0-9_\-.~+/]{20,}=*)")


def entropy(s: str) -> float:
    """Shannon entropy of ``s`` in bits per character."""
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_PLAIN_SEGMENT = re.compile(r"[a-z]+\d{0,2}|[A-Z][a-z]*\d{0,2}|[A-Z]+\d{0,2}|\d+|")


def _looks_random(value: str) -> bool:
    """A credential-like value: letters and digits, not made of plain words, high entropy.

    ``models/tok-v2/tokenizer.json`` and ``self._cache_token_v2`` are made of plain words (each
    piece between ``/._-`` is lower, Capitalised, UPPER or digits), so they are not secrets.
    """
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    if all(_PLAIN_SEGMENT.fullmatch(part) for part in re.split(r"[/._\-~+=]", value)):
        return False
    return entropy(value) >= 3.0


def _secrets(text: str) -> Iterator[Span]:
    for m in _SECRET_TOKENS.finditer(text):
        if entropy(m.group()) >= 3.0:  # not a placeholder such as ghp_xxxx...
            yield m.start(), m.end(), "secret"
    if "-----BEGIN" in text:
        for m in _PEM.finditer(text):
            yield m.start(), m.start() + len(m.group().rstrip()), "secret"
    for pattern in (_ASSIGNED, _BEARER):
        for m in pattern.finditer(text):
            if _looks_random(m.group(1)):
                yield m.start(1), m.end(1), "secret"


# ---------------------------------------------------------------------------------------------
# street addresses (US style)

_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq"
    r"|Terrace|Ter|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Way|Trail|Trl|Alley|Plaza|Row|Loop"
)
_ADDRESS = re.compile(
    r"(?<![\w.,/-])\d{1,6}[A-Z]?\s+"
    r"(?:(?:[NSEW]|N[EW]|S[EW]|North|South|East|West)\.?\s+)?"
    r"(?:(?!(?:The|A|An|In|On|At|Of|And|Or|For|To|By|With|From|This|That|Our|My|Your)\b)"
    r"(?:[A-Z][a-z]+|\d+(?:st|nd|rd|th))\s+){1,3}"
    rf"(?:{_SUFFIX})\b\.?"
    r"(?:\s+(?:[NSEW]|N[EW]|S[EW])\b\.?)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|Room|Rm|#)\.?\s*#?[\w-]{1,6}\b)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2},?\s+[A-Z]{2}(?:\s+\d{5}(?:-\d{4})?)?\b)?"
)
_PO_BOX = re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", re.IGNORECASE)


def _addresses(text: str) -> Iterator[Span]:
    for pattern in (_ADDRESS, _PO_BOX):
        for m in pattern.finditer(text):
            yield m.start(), m.end(), "address"


_DETECTORS: dict[str, Callable[[str], Iterator[Span]]] = {
    "email": _emails,
    "phone": _phones,
    "ip": _ips,
    "credit_card": _cards,
    "iban": _ibans,
    "secret": _secrets,
    "address": _addresses,
}

# ---------------------------------------------------------------------------------------------
# public API


def find(text: str, kinds: Iterable[str] = KINDS) -> list[Span]:
    """Non-overlapping ``(start, end, kind)`` PII spans in ``text``, sorted by start.

    Overlaps resolve by ``PRIORITY``, then by length (longer wins), then by position.
    """
    wanted = set(kinds)
    spans = [s for kind in PRIORITY if kind in wanted for s in _DETECTORS[kind](text)]
    if not spans:
        return []
    rank = {k: i for i, k in enumerate(PRIORITY)}
    spans.sort(key=lambda s: (rank[s[2]], -(s[1] - s[0]), s[0]))
    taken: list[Span] = []
    for span in spans:
        if all(span[1] <= t[0] or span[0] >= t[1] for t in taken):
            taken.append(span)
    return sorted(taken)


def scrub(text: str, kinds: Iterable[str] = KINDS) -> tuple[str, Counter]:
    """``text`` with every PII span of ``kinds`` replaced by its placeholder, and counts per kind."""
    spans = find(text, kinds)
    counts: Counter = Counter()
    if not spans:
        return text, counts
    parts, pos = [], 0
    for start, end, kind in spans:
        parts.append(text[pos:start])
        parts.append(PLACEHOLDERS[kind])
        counts[kind] += 1
        pos = end
    parts.append(text[pos:])
    return "".join(parts), counts


@dataclass
class PIIConfig:
    """Options of the PII scrubber."""

    enabled: bool = opt(True, "replace personal data and secrets with typed placeholders")
    kinds: list[str] = opt(list(KINDS), f"kinds to scrub; valid: {', '.join(KINDS)}")

    def validate(self) -> None:
        unknown = [k for k in self.kinds if k not in PLACEHOLDERS]
        if unknown:
            raise ConfigError("kinds", f"unknown PII kinds {unknown}; valid: {', '.join(KINDS)}")


class PIIScrubber:
    """Step: rewrite each document's text with ``scrub``; drops nothing.

    ``counts()``: ``pii_<kind>`` replacements per kind, ``pii_docs`` documents changed.
    """

    name = "pii"  # shown in per-step statistics

    def __init__(self, cfg: PIIConfig | None = None) -> None:
        self.cfg = cfg or PIIConfig()
        self.found: Counter = Counter()
        self.docs = 0

    def __call__(self, docs: Iterable[Document], drop: DropFn) -> Iterator[Document]:
        for doc in docs:
            text, found = scrub(doc.text, self.cfg.kinds)
            if found:
                self.found.update(found)
                self.docs += 1
                doc = dataclasses.replace(doc, text=text)
            yield doc

    def counts(self) -> dict[str, int]:
        """What this instance measured (summable across worker processes)."""
        out = {f"pii_{k}": self.found[k] for k in self.cfg.kinds}
        out["pii_docs"] = self.docs
        return out


def build(cfg: PIIConfig) -> PIIScrubber | None:
    """The PII step for ``cfg``, or None when disabled or no kinds are selected."""
    return PIIScrubber(cfg) if cfg.enabled and cfg.kinds else None
