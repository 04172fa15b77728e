"""Static word embeddings (word2vec) as a classic baseline and as an initialisation of token embeddings.

- ``train_word2vec``: skip-gram or CBOW with negative sampling (Mikolov et al. 2013), by ``gensim``'s
  ``Word2Vec``, on sentences of word tokens (``classic_text.words`` or ``classic_tokens``).
  Reproducible: one worker thread, a fixed seed, and a string hash that does not depend on Python's
  per-process hash randomisation (gensim's default, ``hash``, does).
- ``average_vectors``: a text's feature is the mean vector of its known words (zeros if none).
- ``embedding_baseline``: logistic regression on averaged vectors, scored by
  ``classification.classification_metrics``: the bag-of-words baseline's sibling that knows which
  words are similar but still ignores word order.
- ``init_token_embeddings``: copy a word's vector into the row of a word-level tokenizer's token,
  for every token the vectors know, rescaled to the standard deviation the rows already have (so a
  model's initialisation scale is kept); unknown tokens and special tokens keep their random rows.

``gensim`` is in the optional ``classic`` extra (``pip install 'lmforge[classic]'``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def train_word2vec(
    sentences: Iterable[Sequence[str]],
    *,
    skip_gram: bool = True,
    vector_size: int = 64,
    window: int = 5,
    min_count: int = 2,
    negative: int = 5,
    epochs: int = 10,
    seed: int = 0,
) -> Any:
    """Train word2vec; returns gensim ``KeyedVectors`` (``kv[word]``, ``kv.similarity(a, b)``).

    Args:
        sentences: each a list of word tokens.
        skip_gram: skip-gram (predict the context from the word) if true, else CBOW (the word from the
            mean of its context).
        vector_size, window, min_count, negative, epochs: gensim's parameters of the same names.
        seed: initialisation and sampling seed.

    Raises:
        ImportError: gensim is not installed.
        ValueError: no word occurs ``min_count`` times.
    """
    try:
        from gensim.models import Word2Vec
    except ImportError as e:
        raise ImportError("word2vec needs gensim: pip install 'lmforge[classic]'") from e
    sentences = [list(s) for s in sentences if s]
    model = Word2Vec(
        vector_size=vector_size,
        window=window,
        min_count=min_count,
        sg=int(skip_gram),
        negative=negative,
        seed=seed,
        workers=1,
        hashfxn=_stable_hash,
    )
    model.build_vocab(sentences)
    if not model.wv.key_to_index:
        raise ValueError(f"no word occurs min_count={min_count} times in {len(sentences)} sentences")
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    log.info(
        "word2vec (%s): %d words x %d dims, %d sentences, %d epochs",
        "skip-gram" if skip_gram else "CBOW",
        len(model.wv),
        vector_size,
        len(sentences),
        epochs,
    )
    return model.wv


def average_vectors(kv: Any, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """``[len(token_lists), vector_size]``: each row the mean vector of the known tokens (0 if none)."""
    out = np.zeros((len(token_lists), kv.vector_size), dtype=np.float32)
    for i, tokens in enumerate(token_lists):
        known = [t for t in tokens if t in kv.key_to_index]
        if known:
            out[i] = kv[known].mean(axis=0)
    return out


def embedding_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    eval_texts: Sequence[str],
    eval_labels: Sequence[str],
    *,
    kv: Any = None,
    labels: Sequence[str] | None = None,
    preprocess: str = "none",
    seed: int = 0,
    **word2vec: Any,
) -> dict[str, Any]:
    """Logistic regression on averaged word vectors; returns ``classification_metrics`` on the eval split.

    ``kv``: vectors to use; by default word2vec is trained on the training texts (``word2vec`` keyword
    arguments go to ``train_word2vec``). ``preprocess`` as in ``classification.bow_baseline``.
    """
    from sklearn.linear_model import LogisticRegression

    from lmforge.eval.classic_text import preprocess_all, words
    from lmforge.eval.classification import classification_metrics

    if len(set(train_labels)) < 2:
        raise ValueError(
            f"the baseline needs at least two classes in training, got {sorted(set(train_labels))}"
        )
    train_tokens = [words(t) for t in preprocess_all(train_texts, preprocess)]
    eval_tokens = [words(t) for t in preprocess_all(eval_texts, preprocess)]
    if kv is None:
        kv = train_word2vec(train_tokens, seed=seed, **word2vec)
    classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    classifier.fit(average_vectors(kv, train_tokens), list(train_labels))
    predicted = [str(p) for p in classifier.predict(average_vectors(kv, eval_tokens))]
    return classification_metrics(list(eval_labels), predicted, labels)


def init_token_embeddings(weight: Any, vocab: dict[str, int], kv: Any, *, lowercase: bool = True) -> int:
    """Write word vectors into the rows of an embedding matrix, in place; returns how many rows.

    Args:
        weight: ``[vocab_size, n_embd]`` torch tensor (e.g. ``model.tok_emb.weight``); ``n_embd`` must
            equal the vectors' size.
        vocab: token → row (``tokenizer.get_vocab()`` of a word-level tokenizer). Tokens are looked up
            as they are, then lower-cased (``lowercase``); special tokens (``<|...|>``, ``[UNK]``) are
            skipped.
        kv: gensim ``KeyedVectors``.

    The copied vectors are scaled to the standard deviation of the matrix's current rows, so the
    model's initialisation scale is kept.

    Raises:
        ValueError: the embedding width differs from the vectors' size.
    """
    import torch

    if weight.shape[1] != kv.vector_size:
        raise ValueError(
            f"embedding width {weight.shape[1]} differs from the word vectors' size {kv.vector_size}: "
            "train word2vec with vector_size = n_embd"
        )
    rows, vectors = [], []
    for token, row in vocab.items():
        if token.startswith("<|") or token == "[UNK]":
            continue
        key = token if token in kv.key_to_index else token.lower() if lowercase else token
        if key in kv.key_to_index:
            rows.append(row)
            vectors.append(kv[key])
    if not rows:
        log.warning("no token of the vocabulary has a word vector")
        return 0
    with torch.no_grad():
        new = torch.tensor(np.stack(vectors), dtype=weight.dtype, device=weight.device)
        new = new * (weight.std() / new.std().clamp_min(1e-12))
        weight[torch.tensor(rows, device=weight.device)] = new
    log.info("initialised %d of %d token embeddings from word vectors", len(rows), len(vocab))
    return len(rows)
