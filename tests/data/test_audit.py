"""Tests for lmforge.data.audit: group counts by hand, word boundaries, phrases, blocklist drops."""

from __future__ import annotations

import pickle

import pytest

from lmforge.data.audit import DEFAULT_GROUPS, Audit, AuditConfig, build, load_blocklist
from lmforge.data.document import Document
from lmforge.errors import ConfigError, InputError

GROUPS = {"female": ["she", "her", "woman"], "male": ["he", "his", "man"], "place": ["new york"]}


def _docs() -> list[Document]:
    return [
        Document("a", "She said her plan was good. The woman left. Then she smiled.", {}),
        Document("b", "He took his hat; the man in New\nYork waved. Ms. Other, these, shell, theme.", {}),
        Document("c", "Nothing here: hello, HERO, manual, heap, whey.", {}),
    ]


def test_counts_by_hand():
    step = Audit(AuditConfig(groups=GROUPS))
    kept = list(step(_docs(), lambda d, r: pytest.fail("audit drops nothing by default")))
    assert len(kept) == 3
    assert step.counts() == {
        "audit_docs": 3,
        "audit_female_docs": 1,
        "audit_female_terms": 4,  # she, her, woman, she
        "audit_male_docs": 1,
        "audit_male_terms": 3,  # he, his, man ("these", "shell", "theme" are not "he")
        "audit_place_docs": 1,
        "audit_place_terms": 1,  # the phrase matches across a line break
        "blocklist_docs": 0,
        "blocklist_terms": 0,
    }


def test_blocklist_counts_and_drops(tmp_path):
    listing = tmp_path / "block.txt"
    listing.write_text("# words to avoid\nhero  # a comment after the word\n\nwhey\n", encoding="utf-8")
    assert load_blocklist(listing) == ["hero", "whey"]
    counted = Audit(AuditConfig(groups=GROUPS, blocklist_file=str(listing)))
    assert len(list(counted(_docs(), lambda d, r: None))) == 3
    assert counted.counts()["blocklist_docs"] == 1 and counted.counts()["blocklist_terms"] == 2
    dropped = []
    cfg = AuditConfig(
        groups=GROUPS, blocklist=["smiled", "left"], drop_blocklisted=True, max_blocklist_hits=2
    )
    step = pickle.loads(pickle.dumps(build(cfg)))
    kept = list(step(_docs(), lambda d, r: dropped.append((d.id, r))))
    assert [d.id for d in kept] == ["b", "c"] and dropped == [("a", "blocklist")]
    lenient = Audit(
        AuditConfig(groups=GROUPS, blocklist=["smiled"], drop_blocklisted=True, max_blocklist_hits=2)
    )
    assert len(list(lenient(_docs(), lambda d, r: None))) == 3  # one hit is below the threshold


def test_default_groups_and_config():
    step = build(AuditConfig())
    list(
        step([Document("x", "The girl and her mother met an elderly Hindu teacher.", {})], lambda d, r: None)
    )
    counts = step.counts()
    assert counts["audit_gender_female_docs"] == 1 and counts["audit_gender_female_terms"] == 3
    assert counts["audit_age_docs"] == 1 and counts["audit_religion_docs"] == 1
    assert counts["audit_gender_male_docs"] == 0
    assert set(DEFAULT_GROUPS) <= {k[len("audit_") : -len("_docs")] for k in counts if k.endswith("_docs")}
    assert build(AuditConfig(enabled=False)) is None
    with pytest.raises(ConfigError) as exc:
        AuditConfig(blocklist_file="/no/such/file.txt").validate()
    assert exc.value.key == "blocklist_file"
    with pytest.raises(ConfigError) as exc:
        AuditConfig(groups={"Bad Name": ["x"]}).validate()
    assert exc.value.key == "groups"
    with pytest.raises(InputError):
        load_blocklist("/no/such/file.txt")
