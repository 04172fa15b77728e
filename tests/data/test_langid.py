"""Tests for lmforge.data.langid: identification, keep/drop, confidence, counts, config checks."""

from __future__ import annotations

import pickle

import pytest

from lmforge.data.document import Document
from lmforge.data.langid import LangConfig, LanguageFilter, build, identify
from lmforge.errors import ConfigError

TEXTS = {
    "en": "The quick brown fox jumps over the lazy dog while the children watch from the window.",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund, während die Kinder zusehen.",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux pendant que les enfants regardent.",
    "es": "El rápido zorro marrón salta sobre el perro perezoso mientras los niños miran por la ventana.",
}


def _docs() -> list[Document]:
    return [Document(lang, text, {"source": "t"}) for lang, text in TEXTS.items()]


def test_identify_common_languages():
    for lang, text in TEXTS.items():
        got, score = identify(text)
        assert got == lang and 0.5 < score <= 1.0, (lang, got, score)


def test_identify_reads_only_max_chars():
    text = TEXTS["en"] + " " + TEXTS["de"] * 20
    assert identify(text, max_chars=len(TEXTS["en"]))[0] == "en"
    assert identify(text)[0] == "de"


def test_keep_english_drops_others_and_tags_metadata():
    dropped = []
    step = pickle.loads(pickle.dumps(build(LangConfig())))  # the model is not pickled
    kept = list(step(_docs(), lambda d, r: dropped.append((d.id, r))))
    assert [d.id for d in kept] == ["en"]
    assert kept[0].metadata["lang"] == "en" and 0.5 < kept[0].metadata["lang_score"] <= 1
    assert kept[0].metadata["source"] == "t"
    assert dropped == [("de", "language"), ("fr", "language"), ("es", "language")]
    assert step.counts() == {"lang_de": 1, "lang_en": 1, "lang_es": 1, "lang_fr": 1}
    assert len(pickle.dumps(step)) < 10_000


def test_empty_keep_only_counts_and_confidence_threshold():
    step = LanguageFilter(LangConfig(keep=[]))
    kept = list(step(_docs(), lambda d, r: pytest.fail("nothing is dropped with keep=[]")))
    assert [d.metadata["lang"] for d in kept] == ["en", "de", "fr", "es"]
    strict = LanguageFilter(LangConfig(keep=["en"], min_confidence=1.0))
    dropped = []
    assert list(strict([Document("x", "ok", {})], lambda d, r: dropped.append(r))) == []
    assert dropped == ["language"]


def test_config():
    assert build(LangConfig(enabled=False)) is None
    for field, value in [("keep", ["english"]), ("min_confidence", 1.5), ("max_chars", 0)]:
        with pytest.raises(ConfigError) as exc:
            LangConfig(**{field: value}).validate()
        assert exc.value.key == field


def test_unknown_code_is_refused_when_the_step_is_built_not_at_validation():
    from lmforge.data.langid import build
    from lmforge.errors import ConfigError

    cfg = LangConfig(keep=["en", "qq"])
    cfg.validate()  # the form is fine, and validating must not need the model
    with pytest.raises(ConfigError, match="qq"):
        build(cfg)
