"""Tests for lmforge.data.normalize: each option, mojibake repair and its precheck, the step."""

from __future__ import annotations

import pickle

from lmforge.data.document import Document
from lmforge.data.normalize import Normalize, NormalizeConfig, build, has_mojibake, normalize_text

ALL_OFF = NormalizeConfig(nfc=False, fix_mojibake=False, strip_control=False, normalize_whitespace=False)


def test_mojibake_is_repaired_and_clean_text_untouched():
    assert normalize_text("cafÃ© au lait") == "café au lait"
    assert normalize_text("He said â€œhelloâ€\x9d and left") == "He said “hello” and left"
    assert normalize_text("naÃ¯ve rÃ©sumÃ©") == "naïve résumé"
    clean = "“Curly quotes”, ﬁ ligature, &amp; entity, São Paulo, ÃO in caps, 10 µs"
    assert normalize_text(clean) == clean  # only encoding repairs; nothing else of ftfy's
    assert not has_mojibake(clean)


def test_precheck_is_cheap_gate():
    assert has_mojibake("cafÃ©") and has_mojibake("â€™") and has_mojibake("ï»¿BOM")
    assert not has_mojibake("plain ASCII text") and not has_mojibake("café, naïve, Ελληνικά, 日本語")


def test_each_option_can_be_turned_off():
    text = "cafÃ©\x07 e\u0301  \r\n\n\n\n\nend  "
    assert normalize_text(text, ALL_OFF) == text
    only_nfc = normalize_text(
        text, NormalizeConfig(fix_mojibake=False, strip_control=False, normalize_whitespace=False)
    )
    assert only_nfc == text.replace("e\u0301", "\u00e9")
    no_moji = normalize_text(text, NormalizeConfig(fix_mojibake=False))
    assert no_moji == "cafÃ© é\n\n\nend"
    no_ws = normalize_text(text, NormalizeConfig(normalize_whitespace=False))
    assert no_ws == "café é  \n\n\n\n\nend  "  # line endings unified (control stripping is on)
    no_ctrl = normalize_text(text, NormalizeConfig(strip_control=False))
    assert no_ctrl == "café\x07 é\n\n\nend"


def test_step_counts_mojibake_and_keeps_unchanged_docs():
    docs = [Document("a", "cafÃ©", {"source": "s"}), Document("b", "fine", {}), Document("c", "x  ", {})]
    step = pickle.loads(pickle.dumps(build(NormalizeConfig())))
    out = list(step(docs, lambda d, r: None))
    assert [d.text for d in out] == ["café", "fine", "x"]
    assert out[1] is docs[1] and out[0].metadata == {"source": "s"}
    assert step.counts() == {"mojibake_fixed": 1}
    assert isinstance(build(NormalizeConfig(nfc=False)), Normalize)
    assert build(ALL_OFF) is None
