"""Classic translation baselines, scored by BLEU and chrF beside the model (``eval/baselines.py``).

They read ``Doc.fields["source"]`` (the source sentence); the IBM Model 1 baseline fits on the
training split (``Task.fewshot_pool``: its sources and their references), never on the evaluated
docs' references.

- ``copy``: the source sentence itself. The floor that shared strings give: names, numbers,
  punctuation and cognates score without any translation.
- ``ibm1``: word-by-word translation with the lexical table of IBM Model 1 (Brown et al. 1993,
  "The Mathematics of Statistical Machine Translation", section 4.1). EM fits ``t(f | e)``, the
  probability that source word ``e`` (or the empty word NULL) produces target word ``f``, from
  uniform, as in the paper; then each source word is replaced by its most probable target word
  ``argmax_f t(f | e)`` and a word never seen in training is copied. No reordering, no language
  model, one target word per source word: a lexicon, the first piece of a statistical MT system.

The EM is vectorised with numpy over every (source position, target position) co-occurrence of the
training split instead of using ``nltk.translate.IBMModel1``: nltk's pure-Python loop took 17 s per
iteration on Multi30k's 29,000 pairs on the development machine (busy, 2 cores), this one well under
a second; the two give the same table (``tests/eval/test_translate.py`` checks it against nltk).

Words are ``\\w+'`` (elisions such as French ``l'``), ``\\w+(-\\w+)*`` or one other character;
the output is re-spaced as the training targets are: no space after a word that the training
targets mostly write without one after it (``l'homme``), nor before a punctuation mark they mostly
write without one before it (``homme,``) — so Multi30k's raw text and Europarl's tokenized text
each get their own spacing.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.eval.baselines import Baseline
from lmforge.eval.tasks import Task

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+'|\w+(?:-\w+)*|[^\w\s]")
_ALNUM = re.compile(r"\w")
NULL = "<NULL>"


def words(text: str) -> list[str]:
    """The words of ``text`` (module docstring)."""
    return _WORD.findall(text)


def spaced_words(text: str) -> list[tuple[str, bool, bool]]:
    """``(word, space before it, space after it)`` for each word of ``text``; the text's edges count as
    spaces."""
    out = []
    for m in _WORD.finditer(text):
        before = m.start() == 0 or text[m.start() - 1].isspace()
        after = m.end() == len(text) or text[m.end()].isspace()
        out.append((m.group(), before, after))
    return out


@dataclass
class Spacing:
    """How the training targets space each word: the punctuation mostly written glued to the word on
    its left (``no_before``: ``,`` ``.``) and the words ending in punctuation mostly glued to the word
    on their right (``no_after``: ``l'``, ``(``). A word ending in a letter is never glued: ``herbe``
    is mostly written after ``l'`` and before ``.``, which is their doing, not its own."""

    no_before: frozenset[str]
    no_after: frozenset[str]

    @classmethod
    def fit(cls, texts: Sequence[str]) -> Spacing:
        seen, glued_before, glued_after = Counter(), Counter(), Counter()
        for text in texts:
            for w, before, after in spaced_words(text):
                seen[w] += 1
                glued_before[w] += not before
                glued_after[w] += not after
        return cls(
            frozenset(w for w, n in seen.items() if glued_before[w] * 2 > n and not _ALNUM.match(w)),
            frozenset(w for w, n in seen.items() if glued_after[w] * 2 > n and not _ALNUM.match(w[-1])),
        )

    def join(self, ws: Sequence[str]) -> str:
        out = []
        for i, w in enumerate(ws):
            if i and not (ws[i - 1] in self.no_after or w in self.no_before):
                out.append(" ")
            out.append(w)
        return "".join(out)


@dataclass
class IBM1:
    """A fitted IBM Model 1 lexical table ``t(f | e)`` over the pairs that co-occur in training.

    ``pairs[k] = (e, f)`` (vocabulary indices, ``e = 0`` is NULL) has probability ``prob[k]``.
    """

    src_vocab: list[str]
    tgt_vocab: list[str]
    pair_e: np.ndarray  # [P] int64
    pair_f: np.ndarray  # [P] int64
    prob: np.ndarray  # [P] float64

    def table(self) -> dict[tuple[str, str], float]:
        """``{(e, f): t(f | e)}`` for every co-occurring pair (NULL as ``"<NULL>"``)."""
        return {
            (self.src_vocab[e], self.tgt_vocab[f]): float(p)
            for e, f, p in zip(self.pair_e, self.pair_f, self.prob)
        }

    def best(self) -> dict[str, str]:
        """Each source word (not NULL) → its most probable target word (ties: the first in
        vocabulary order, i.e. the first seen)."""
        order = np.lexsort((self.pair_f, -self.prob, self.pair_e))  # by e, then t descending
        e_sorted = self.pair_e[order]
        first = order[np.r_[True, e_sorted[1:] != e_sorted[:-1]]]
        return {
            self.src_vocab[e]: self.tgt_vocab[f] for e, f in zip(self.pair_e[first], self.pair_f[first]) if e
        }


def fit_ibm1(bitext: Sequence[tuple[Sequence[str], Sequence[str]]], iterations: int = 10) -> IBM1:
    """IBM Model 1 by EM on ``(source words, target words)`` pairs (Brown et al. 1993, eq. 17 and 19).

    E-step: each target word ``f_j`` of a pair is aligned to source position ``i`` (NULL included)
    with probability ``t(f_j | e_i) / sum_i' t(f_j | e_i')``; M-step: ``t(f | e)`` is the expected
    count of ``(e, f)`` over the expected count of ``e``. The first E-step from uniform ``t`` spreads
    each target word evenly over its sentence's source positions.

    Raises:
        ValueError: ``iterations < 1`` or no pair with words on both sides.
    """
    if iterations < 1:
        raise ValueError(f"iterations: expected >= 1, got {iterations}")
    src_ids: dict[str, int] = {NULL: 0}
    tgt_ids: dict[str, int] = {}
    es, fs, rows = [], [], []
    n_rows = 0
    for src, tgt in bitext:
        if not src or not tgt:
            continue
        e = np.array([0] + [src_ids.setdefault(w, len(src_ids)) for w in src], dtype=np.int64)
        f = np.array([tgt_ids.setdefault(w, len(tgt_ids)) for w in tgt], dtype=np.int64)
        es.append(np.tile(e, len(f)))  # [J * (I + 1)]: for each target position, every source one
        fs.append(np.repeat(f, len(e)))
        rows.append(np.repeat(np.arange(n_rows, n_rows + len(f)), len(e)))
        n_rows += len(f)
    if not es:
        raise ValueError("bitext: no pair has words on both sides")
    e_all, f_all, row = np.concatenate(es), np.concatenate(fs), np.concatenate(rows)
    keys, pid = np.unique(e_all * len(tgt_ids) + f_all, return_inverse=True)
    pair_e, pair_f = keys // len(tgt_ids), keys % len(tgt_ids)
    prob = np.full(len(keys), 1.0 / len(tgt_ids))
    for _ in range(iterations):
        v = prob[pid]
        post = v / np.bincount(row, v, minlength=n_rows)[row]  # alignment posteriors
        counts = np.bincount(pid, post, minlength=len(keys))
        prob = counts / np.bincount(pair_e, counts, minlength=len(src_ids))[pair_e]
    log.info(
        "IBM1: %d pairs, %d source and %d target words, %d co-occurring pairs, %d EM iterations",
        len(bitext),
        len(src_ids) - 1,
        len(tgt_ids),
        len(keys),
        iterations,
    )
    return IBM1(list(src_ids), list(tgt_ids), pair_e, pair_f, prob)


def translate_words(sources: Sequence[str], lexicon: dict[str, str], spacing: Spacing) -> list[str]:
    """Each source sentence word by word through ``lexicon`` (unknown words copied), re-spaced."""
    return [spacing.join([lexicon.get(w, w) for w in words(s)]) for s in sources]


def _ibm1(task: Task) -> list[str]:
    pool = task.fewshot_pool or []
    targets = [d.references[0] for d in pool]
    model = fit_ibm1([(words(d.fields["source"]), words(t)) for d, t in zip(pool, targets)])
    return translate_words([d.fields["source"] for d in task.docs], model.best(), Spacing.fit(targets))


def _copy(task: Task) -> list[str]:
    return [d.fields["source"] for d in task.docs]


IBM1_WORDS = Baseline(
    "ibm1",
    ("generation",),
    ("source",),
    _ibm1,
    "word-by-word translation through an IBM Model 1 lexicon fitted by EM on the training pairs",
)
COPY = Baseline(
    "copy",
    ("generation",),
    ("source",),
    _copy,
    "the source sentence unchanged (translation floor)",
    train=False,
)
