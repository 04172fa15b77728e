"""BM25 against hand-computed scores and rankings, and retrieval pairs from passage tasks (leak-free)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from lmforge.eval.classic.bm25 import BM25, bm25_scores, terms
from lmforge.training.contrastive import mrr_from_scores, recall_from_scores

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_bm25_scores_by_hand() -> None:
    docs = ["Cat sat mat", "dog dog ran", "cat cat cat dog"]  # lengths 3, 3, 4; avgdl 10/3
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # cat is in 2 of 3 documents
    norm = lambda n: 1.5 * (1 - 0.75 + 0.75 * n / (10 / 3))  # noqa: E731  k1 · (1 − b + b·|d|/avgdl)
    want = [idf_cat * 1 * 2.5 / (1 + norm(3)), 0.0, idf_cat * 3 * 2.5 / (3 + norm(4))]
    assert BM25(docs).scores("cat") == pytest.approx(want)
    idf_dog = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    dog = [0.0, idf_dog * 2 * 2.5 / (2 + norm(3)), idf_dog * 1 * 2.5 / (1 + norm(4))]
    # a query term counts as often as it occurs; unknown terms add nothing
    assert BM25(docs).scores("cat dog dog zebra") == pytest.approx([w + 2 * d for w, d in zip(want, dog)])
    assert terms("It's a CAT-dog!") == ["it", "s", "a", "cat", "dog"]
    with pytest.raises(ValueError, match="document"):
        BM25([])


def test_bm25_ranks_a_hand_made_case_and_its_recall() -> None:
    passages = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
        "Photosynthesis converts light energy into chemical energy in plants.",
        "The Great Wall of China was built over many centuries.",
        "Mount Everest is the highest mountain above sea level.",
    ]
    queries = [
        "which tower stands in paris",
        "how do plants turn light into energy",
        "what is the highest mountain",
        "who painted the mona lisa",  # shares no term but 'the' with anything relevant
    ]
    scores = bm25_scores(queries, passages)
    assert scores.shape == (4, 4)
    assert scores[:3].argmax(axis=1).tolist() == [0, 1, 3]
    r = recall_from_scores(torch.from_numpy(scores), torch.tensor([0, 1, 3, 2]), (1, 4))
    assert r["recall_at_4"] == 1.0 and 0.75 <= r["recall_at_1"] < 1.0


def test_recall_counts_ties_by_expectation() -> None:
    """A scorer that ties everything finds the right one of M candidates with probability k / M."""
    flat = torch.zeros(3, 4)
    assert recall_from_scores(flat, torch.tensor([0, 1, 2]), (1, 2, 4)) == pytest.approx(
        {"recall_at_1": 0.25, "recall_at_2": 0.5, "recall_at_4": 1.0}
    )
    # one higher candidate, the own one tied with one more: in the top 2 half the time
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    assert recall_from_scores(scores, torch.tensor([1]), (1, 2, 3)) == pytest.approx(
        {"recall_at_1": 0.0, "recall_at_2": 0.5, "recall_at_3": 1.0}
    )
    with pytest.raises(ValueError, match="targets"):
        recall_from_scores(flat, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="square"):
        recall_from_scores(flat)


def squad_zip(root: Path, n_articles: int = 8) -> Path:
    """``root/squad-v1.1/dev-v1.1.json.zip`` with two paragraphs of three questions per article."""
    data = [
        {
            "title": f"Article_{a}",
            "paragraphs": [
                {
                    "context": f"article {a} paragraph {p} tells of topic{a}x{p} and more",
                    "qas": [
                        {"question": f"what of topic{a}x{p} ({q})?", "answers": [{"text": "more"}]}
                        for q in range(3)
                    ],
                }
                for p in range(2)
            ],
        }
        for a in range(n_articles)
    ]
    path = root / "squad-v1.1" / "dev-v1.1.json.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("dev-v1.1.json", json.dumps({"data": data}))
    return root


def test_squad_pairs_hold_out_whole_articles(tmp_path: Path) -> None:
    from lmforge.config import ConfigError
    from lmforge.eval.corpus import task_pairs

    train, held = task_pairs("squad", squad_zip(tmp_path))
    assert (len(train), len(held)) == (6 * 6, 2 * 6)  # the last quarter of the articles is held out
    assert not {p.b for p in train} & {p.b for p in held}
    assert all(p.b.startswith(("article 6 ", "article 7 ")) for p in held)
    assert held[0].a == "what of topic6x0 (0)?" and held[0].b.startswith("article 6 paragraph 0")
    with pytest.raises(ConfigError, match="pair tasks"):
        task_pairs("hellaswag", tmp_path)


@pytest.mark.skipif(not (SHARED / "squad-v1.1").is_dir(), reason="../shared/data/squad-v1.1 is not here")
def test_shared_squad_pairs_share_no_passage() -> None:
    from lmforge.eval.corpus import task_pairs

    train, held = task_pairs("squad", SHARED)
    assert (len(train), len(held)) == (8123, 2447)
    assert not {p.b for p in train} & {p.b for p in held}


def test_mean_reciprocal_rank_by_hand() -> None:
    """Ranks 1 and 3 give (1 + 1/3) / 2; a tie between ranks 2 and 3 is worth (1/2 + 1/3) / 2; a scorer
    that ties all 4 candidates is worth (1 + 1/2 + 1/3 + 1/4) / 4."""
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.9, 0.8, 0.1]])
    assert mrr_from_scores(scores, torch.tensor([0, 2])) == pytest.approx((1 + 1 / 3) / 2)
    tied = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    assert mrr_from_scores(tied, torch.tensor([2])) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert mrr_from_scores(torch.zeros(1, 4), torch.tensor([3])) == pytest.approx(
        (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4
    )
