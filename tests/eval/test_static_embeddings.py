"""Classic baselines: word2vec puts near-synonyms closer than unrelated words (skip-gram and CBOW), the
averaged-embedding classifier generalises to synonyms the bag of words never saw, token embeddings
initialised from word vectors keep those neighbours; classic preprocessing (stop words, lemmas)."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.eval.classic_text import classic_tokens, preprocess_all, words
from lmforge.eval.classification import bow_baseline

pytest.importorskip("gensim", reason="gensim is not installed (pip install 'lmforge[classic]')")
from lmforge.eval.static_embeddings import (  # noqa: E402
    average_vectors,
    embedding_baseline,
    init_token_embeddings,
    train_word2vec,
)

GROUPS = {
    "animal": (
        ("cat", "kitten"),
        [
            "the {} chased the mouse",
            "a small {} purred softly",
            "my {} sleeps on the sofa",
            "the {} drank warm milk",
        ],
    ),
    "vehicle": (
        ("car", "automobile"),
        [
            "the {} drove down the road",
            "he parked his {} outside",
            "the {} needs more fuel",
            "a red {} honked loudly",
        ],
    ),
    "feeling": (
        ("happy", "glad"),
        [
            "she felt {} today",
            "they were {} about the news",
            "i am so {} to see you",
            "the children looked {}",
        ],
    ),
}


def corpus(n: int = 1500, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(sentence, group, keyword)`` triples: both words of a group appear in the same contexts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = rng.choice(sorted(GROUPS))
        pair, templates = GROUPS[group]
        word = rng.choice(pair)
        out.append((rng.choice(templates).format(word), group, word))
    return out


@pytest.fixture(scope="module")
def sentences() -> list[list[str]]:
    return [words(s) for s, _, _ in corpus()]


@pytest.mark.parametrize("skip_gram", [True, False])
def test_near_synonyms_are_closer_than_unrelated_words(sentences, skip_gram: bool) -> None:
    kv = train_word2vec(sentences, skip_gram=skip_gram, vector_size=24, window=3, min_count=1, epochs=15)
    for group, ((a, b), _) in GROUPS.items():
        others = [w for g, (pair, _) in GROUPS.items() if g != group for w in pair]
        synonym = kv.similarity(a, b)
        assert all(synonym > kv.similarity(a, o) for o in others), (
            group,
            synonym,
            [kv.similarity(a, o) for o in others],
        )


def test_word2vec_is_reproducible(sentences) -> None:
    a = train_word2vec(sentences[:300], vector_size=8, min_count=1, epochs=2, seed=3)
    b = train_word2vec(sentences[:300], vector_size=8, min_count=1, epochs=2, seed=3)
    assert (a["cat"] == b["cat"]).all()
    with pytest.raises(ValueError, match="min_count=99"):
        train_word2vec(sentences[:10], min_count=99)


def test_embedding_baseline_generalises_to_unseen_synonyms(sentences) -> None:
    """Trained on sentences with 'cat' / 'car' only, asked about 'kitten' / 'automobile': the bag of words
    has never seen them (chance), averaged word vectors know their neighbours."""
    kv = train_word2vec(sentences, vector_size=24, window=3, min_count=1, epochs=15)
    train = [(s, g) for s, g, w in corpus() if w in ("cat", "car")]
    tests = [("kitten", "animal"), ("automobile", "vehicle")] * 5
    args = ([s for s, _ in train], [g for _, g in train], [s for s, _ in tests], [g for _, g in tests])
    emb = embedding_baseline(*args, kv=kv)
    bow = bow_baseline(*args)
    assert emb["accuracy"] == 1.0 and bow["accuracy"] == 0.5
    assert average_vectors(kv, [["nonword"]]).sum() == 0.0
    trained_here = embedding_baseline(
        *args, vector_size=8, min_count=1, epochs=2
    )  # word2vec on the train split
    assert 0.0 <= trained_here["accuracy"] <= 1.0 and trained_here["n"] == 10


def test_init_token_embeddings_for_a_word_level_tokenizer(sentences) -> None:
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder
    from lmforge.tokenizer.train import TokenizerSpec, train_tokenizer

    kv = train_word2vec(sentences, vector_size=32, window=3, min_count=1, epochs=15)
    tok = train_tokenizer(
        [" ".join(s) for s in sentences], TokenizerSpec(kind="word", vocab_size=200, min_frequency=1)
    )
    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1, n_head=2, n_embd=32)
    )
    weight = model.tok_emb.weight
    std, bos_row = weight.std().item(), weight[0].clone()
    vocab = tok.get_vocab()
    n = init_token_embeddings(weight, vocab, kv)
    assert n == len({w for s in sentences for w in s})  # every corpus word, no special token
    assert torch.equal(weight[0], bos_row)
    row = lambda w: weight[vocab[w]]  # noqa: E731
    cos = torch.nn.functional.cosine_similarity
    assert cos(row("cat"), row("kitten"), dim=0) > cos(row("cat"), row("car"), dim=0)
    assert weight.std().item() == pytest.approx(std, rel=0.2)
    with pytest.raises(ValueError, match="vector_size = n_embd"):
        init_token_embeddings(torch.zeros(10, 16), vocab, kv)


def test_classic_preprocessing() -> None:
    pytest.importorskip("simplemma", reason="simplemma is not installed (pip install 'lmforge[classic]')")
    assert words("Don't STOP, it's 2024!") == ["don't", "stop", "it's", "2024"]
    assert classic_tokens("The mice were running to the houses") == ["mouse", "run", "house"]
    assert classic_tokens("The mice were running", lemmas=False) == ["mice", "running"]
    assert classic_tokens("The mice were running", stopwords=False) == ["the", "mouse", "be", "run"]
    assert preprocess_all(["The cats"], "none") == ["The cats"]
    assert preprocess_all(["The cats"], "stopwords+lemmas") == ["cat"]
    with pytest.raises(ValueError, match="preprocess"):
        preprocess_all(["x"], "stem")
    # lemmas let the bag of words match an inflection it never saw in training
    train = ["the cat sleeps", "the dog runs", "cats sleep", "dogs run"]
    labels = ["sleep", "run", "sleep", "run"]
    raw = bow_baseline(train, labels, ["sleeping", "running"], ["sleep", "run"])
    lem = bow_baseline(
        train, labels, ["sleeping", "running"], ["sleep", "run"], preprocess="stopwords+lemmas"
    )
    assert lem["accuracy"] == 1.0 and raw["accuracy"] < 1.0
