"""Classic named-entity taggers, the baselines ``finetune.ner`` reports beside the transformer.

- ``most_frequent_tag``: each token gets the tag it carried most often in training (looked up
  lower-cased; ties go to the tag seen first); unseen tokens get ``O``. It measures how much of the
  test set is memorisable from the training split.
- ``crf_tagger``: a linear-chain conditional random field (Lafferty et al. 2001) over hand-written
  features, the standard pre-neural NER system: the word lower-cased, its prefixes and suffixes (1-3
  characters), capitalisation, digits, its shape (``Xxxx``, ``dd``), tweet markers (``@user``,
  ``#tag``, URLs), and the same for the neighbours one and two tokens away. Trained with L-BFGS and
  elastic-net regularisation (``c1`` L1, ``c2`` L2) by CRFsuite through ``sklearn-crfsuite`` (imported
  on use; ``pip install sklearn-crfsuite``).

Both take training sentences as ``(tokens, tags)`` pairs (``eval.loaders.read_conll``) and return one
tag list per sentence to tag; ``eval.metrics.entity_scores`` scores them as it scores the model.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

log = logging.getLogger(__name__)

Sentence = tuple[list[str], list[str]]  # (tokens, BIO tags)

_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)


def most_frequent_tag(train: Sequence[Sentence], sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """Tag each token of ``sentences`` with its most frequent training tag (lower-cased look-up), else ``O``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for tokens, tags in train:
        for token, tag in zip(tokens, tags):
            counts[token.lower()][tag] += 1
    best = {token: c.most_common(1)[0][0] for token, c in counts.items()}
    return [[best.get(token.lower(), "O") for token in tokens] for tokens in sentences]


def word_shape(word: str) -> str:
    """Capitals → ``X``, lower-case letters → ``x``, digits → ``d``, runs collapsed: ``iPhone7`` → ``xXxd``."""
    shape = []
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.isalpha() else "d" if ch.isdigit() else ch
        if not shape or shape[-1] != c:
            shape.append(c)
    return "".join(shape)


def _word_features(word: str, prefix: str) -> dict[str, str | bool]:
    return {
        f"{prefix}lower": word.lower(),
        f"{prefix}istitle": word.istitle(),
        f"{prefix}isupper": word.isupper(),
        f"{prefix}shape": word_shape(word),
    }


def token_features(tokens: Sequence[str], i: int) -> dict[str, str | bool]:
    """The CRF features of token ``i`` of a sentence (module docstring)."""
    word = tokens[i]
    feats: dict[str, str | bool] = {"bias": True, **_word_features(word, "")}
    feats.update(
        {
            "isdigit": word.isdigit(),
            "hasdigit": any(ch.isdigit() for ch in word),
            "length": str(min(len(word), 10)),
            "mention": word.startswith("@"),
            "hashtag": word.startswith("#"),
            "url": bool(_URL.match(word)),
        }
    )
    for n in (1, 2, 3):
        feats[f"prefix{n}"] = word[:n].lower()
        feats[f"suffix{n}"] = word[-n:].lower()
    for offset in (-2, -1, 1, 2):
        j = i + offset
        if 0 <= j < len(tokens):
            feats.update(_word_features(tokens[j], f"{offset:+d}:"))
        else:
            feats[f"{offset:+d}:pad"] = True  # before the start / after the end
    return feats


def sentence_features(tokens: Sequence[str]) -> list[dict[str, str | bool]]:
    """``token_features`` of every token of a sentence."""
    return [token_features(tokens, i) for i in range(len(tokens))]


def crf_tagger(
    train: Sequence[Sentence],
    sentences: Sequence[Sequence[str]],
    *,
    c1: float = 0.1,
    c2: float = 0.1,
    max_iterations: int = 100,
) -> list[list[str]]:
    """Train a linear-chain CRF on ``train`` and tag ``sentences`` (module docstring).

    Raises:
        ImportError: ``sklearn-crfsuite`` is not installed (the message says how to install it).
        ValueError: ``train`` is empty.
    """
    try:
        import sklearn_crfsuite
    except ImportError as exc:
        raise ImportError(
            "the CRF baseline needs sklearn-crfsuite: pip install sklearn-crfsuite "
            "(or turn it off with crf_baseline=false)"
        ) from exc
    if not train:
        raise ValueError("crf_tagger needs at least one training sentence")
    crf = sklearn_crfsuite.CRF(
        algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations, all_possible_transitions=True
    )
    crf.fit([sentence_features(t) for t, _ in train], [list(tags) for _, tags in train])
    log.info("CRF trained on %d sentences (%d features)", len(train), len(crf.state_features_))
    if not sentences:
        return []
    return [list(tags) for tags in crf.predict([sentence_features(t) for t in sentences])]
