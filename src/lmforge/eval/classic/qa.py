"""Classic question-answering baselines: SQuAD's sliding window and BoolQ's bag-of-words regression.

``sliding-window`` (SQuAD, generation): the sliding-window baseline of the SQuAD paper (Rajpurkar et
al. 2016, section 5.1), which scores candidate spans with the sliding window and distance of
Richardson et al. (2013, MCTest, algorithms 1 and 2). For a question Q and a passage:

1. Candidates: spans of 1..``max_len`` consecutive word tokens inside one sentence that neither
   start nor end with a stop word.
2. Sentence filter (Rajpurkar et al.): each candidate's overlap with Q is the number of Q's
   unigrams plus Q's bigrams found in the candidate's sentence with the candidate itself removed;
   only the candidates of maximal overlap are kept.
3. Sliding window (Richardson et al., SW): with the target set S = words(Q) ∪ words(candidate) and
   the inverse count IC(w) = log(1 + 1/C(w)) (C(w): occurrences of w in the passage), the score is
   the largest sum of IC(w) over the words of S in any window of |S| words of the sentence.
4. Distance (Richardson et al., SW+D): minus the smallest distance in the sentence between a
   non-stop word of Q and a non-stop word of the candidate that is not in Q, divided by
   (sentence length - 1); minus 1 when either set is empty.

The highest SW - D wins (ties: the earlier, then the shorter span); the prediction is that span of
the passage text. Departures, all forced by what runs offline here: candidates are word-token spans
rather than the constituents of the Stanford parser the paper took; sentences and words come from a
regular expression; stop words are scikit-learn's English list and do not count as unigram matches
in step 2. Its only setting, ``max_len`` (the longest candidate, 1..``MAX_LEN``), is fitted on the
task's training split: the value with the best mean F1 on up to ``FIT_DOCS`` of its documents.
Rajpurkar et al. report 13.2 EM / 20.2 F1 for their version on SQuAD v1.1 dev.

``bow-qa`` (BoolQ and any choice task whose docs carry ``question`` and ``passage``): the
bag-of-words logistic regression of ``classification.bow_predict`` (word unigrams and bigrams) on
``question + passage``, trained on the task's training split with the gold choice's text as the
label; the majority class is the lead's generic ``majority`` baseline (``eval/baselines.py``).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass

from lmforge.eval.baselines import Baseline
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task

log = logging.getLogger(__name__)

MAX_LEN = 6  # longest candidate span considered when fitting max_len
FIT_DOCS = 600  # training documents the fit of max_len reads (evenly spaced over the split)
_TOKEN = re.compile(r"\w+(?:[-'.,]\w+)*|[^\w\s]")
_SENTENCE_END = frozenset(".!?")


@dataclass(frozen=True)
class _Word:
    text: str  # lower-cased
    start: int  # character offsets in the passage
    end: int


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def sentences(passage: str) -> list[list[_Word]]:
    """The passage's sentences as lists of word tokens (punctuation dropped); a sentence ends at
    ``.``, ``!`` or ``?`` standing as its own token."""
    out: list[list[_Word]] = []
    current: list[_Word] = []
    for m in _TOKEN.finditer(passage):
        tok = m.group()
        if tok[0].isalnum() or tok[0] == "_":
            current.append(_Word(tok.lower(), m.start(), m.end()))
        elif tok in _SENTENCE_END and current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def question_words(question: str) -> list[str]:
    """Lower-cased word tokens of the question."""
    return [w.text for s in sentences(question) for w in s]


def _bigrams(words: list[str]) -> set[tuple[str, str]]:
    return set(zip(words, words[1:]))


def _sliding_window(sentence: list[str], target: set[str], ic: dict[str, float]) -> float:
    """Richardson et al.'s SW: the best window of ``len(target)`` words' summed IC of target words."""
    weights = [ic[w] if w in target else 0.0 for w in sentence]
    size = min(len(target), len(weights))
    best = window = sum(weights[:size])
    for i in range(size, len(weights)):
        window += weights[i] - weights[i - size]
        best = max(best, window)
    return best


def _distance(sentence: list[str], span: tuple[int, int], q_content: set[str], stop: frozenset[str]) -> float:
    """Richardson et al.'s D over the sentence: the normalised smallest distance between a question
    word and a candidate word (both non-stop, in the sentence; candidate words not in the question)."""
    answer = {w for w in sentence[span[0] : span[1]] if w not in stop and w not in q_content}
    q_pos = [i for i, w in enumerate(sentence) if w in q_content]
    a_pos = [i for i, w in enumerate(sentence) if w in answer]
    if not q_pos or not a_pos or len(sentence) < 2:
        return 1.0
    return min(abs(i - j) for i in q_pos for j in a_pos) / (len(sentence) - 1)


def score_candidates(
    passage: str, question: str, max_len: int = MAX_LEN
) -> list[tuple[float, int, int, str]]:
    """Every candidate of the sentence filter (module docstring, steps 1-2) as ``(SW - D, start char,
    length in words, text)``; the prediction is the best (``predict_span``)."""
    stop = _stop_words()
    sents = sentences(passage)
    counts = Counter(w.text for s in sents for w in s)
    ic = {w: math.log(1.0 + 1.0 / c) for w, c in counts.items()}
    q_words = question_words(question)
    q_set, q_bigrams = set(q_words), _bigrams(q_words)
    q_content = {w for w in q_set if w not in stop}
    words = [[w.text for w in sent] for sent in sents]
    spans: list[tuple[int, int, int, int]] = []  # (overlap, sentence, first word, one past the last)
    for k, ws in enumerate(words):
        for i in range(len(ws)):
            if ws[i] in stop:
                continue
            for j in range(i + 1, min(len(ws), i + max_len) + 1):
                if ws[j - 1] in stop:
                    continue
                left, right = ws[:i], ws[j:]
                overlap = len(q_content & (set(left) | set(right)))
                overlap += len(q_bigrams & (_bigrams(left) | _bigrams(right)))
                spans.append((overlap, k, i, j))
    top = max((s[0] for s in spans), default=0)
    out = []
    for overlap, k, i, j in spans:
        if overlap == top:
            ws, sent = words[k], sents[k]
            score = _sliding_window(ws, q_set | set(ws[i:j]), ic) - _distance(ws, (i, j), q_content, stop)
            out.append((score, sent[i].start, j - i, passage[sent[i].start : sent[j - 1].end]))
    return out


def predict_span(passage: str, question: str, max_len: int = MAX_LEN) -> str:
    """The sliding-window baseline's answer to ``question`` about ``passage`` ("" if no candidate)."""
    candidates = score_candidates(passage, question, max_len)
    if not candidates:
        return ""
    return min(candidates, key=lambda c: (-c[0], c[1], c[2]))[3]


def fit_max_len(pool: list[Doc]) -> int:
    """The ``max_len`` in 1..``MAX_LEN`` with the best mean SQuAD F1 on up to ``FIT_DOCS`` documents
    of the training split ``pool`` (evenly spaced over it; ties: the shorter)."""
    from lmforge.eval.metrics import squad_f1

    step = max(1, len(pool) // FIT_DOCS)
    sample = pool[::step][:FIT_DOCS]
    best_len, best_f1 = 1, -1.0
    for n in range(1, MAX_LEN + 1):
        predictions = [predict_span(d.fields["context"], d.fields["question"], n) for d in sample]
        f1 = squad_f1(predictions, [d.references for d in sample])
        log.info("sliding-window: max_len %d -> train F1 %.4f on %d docs", n, f1, len(sample))
        if f1 > best_f1:
            best_len, best_f1 = n, f1
    return best_len


def _sliding_window_run(task: Task) -> list[str]:
    max_len = fit_max_len(task.fewshot_pool or [])
    return [predict_span(d.fields["context"], d.fields["question"], max_len) for d in task.docs]


SLIDING_WINDOW = Baseline(
    "sliding-window",
    ("generation",),
    ("context", "question"),
    _sliding_window_run,
    "SQuAD's sliding-window span picker (Rajpurkar et al. 2016; Richardson et al. 2013)",
)


def _bow_text(doc: Doc) -> str:
    return f"{doc.fields['question']}\n{doc.fields['passage']}"


def _bow_run(task: Task) -> list[int]:
    from lmforge.eval.classification import bow_predict

    pool = task.fewshot_pool or []
    labels = bow_predict(
        [_bow_text(d) for d in pool], [d.choices[d.gold] for d in pool], [_bow_text(d) for d in task.docs]
    )
    out = []
    for d, label in zip(task.docs, labels):
        if label not in d.choices:
            raise ValueError(
                f"bow-qa: predicted {label!r}, which is not among a document's choices {d.choices}"
            )
        out.append(d.choices.index(label))
    return out


BOW_QA = Baseline(
    "bow-qa",
    ("multiple_choice", "classification"),
    ("question", "passage"),
    _bow_run,
    "bag-of-words logistic regression on question + passage (BoolQ)",
)
