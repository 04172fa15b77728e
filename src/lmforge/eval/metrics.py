"""Scores of generated text against references: exact match, SQuAD F1, BLEU, chrF, ROUGE.

- ``normalize_answer``: the SQuAD v1.1 evaluation script's normalisation (lower-case, drop punctuation
  and the articles a/an/the, collapse whitespace) (Rajpurkar et al. 2016).
- ``exact_match`` / ``squad_f1``: per example, the best score over the references, as the official
  script does; F1 is over bags of normalised tokens.
- ``corpus_bleu`` / ``corpus_chrf``: sacrebleu's corpus scores (Post 2018; Papineni et al. 2002;
  Popović 2015) with its defaults (13a tokenisation, exponential smoothing), on a 0-100 scale.
- ``rouge``: ROUGE-1/2/L F-measure (Lin 2004) from Google's ``rouge-score`` with stemming, averaged
  over examples (best over references), on a 0-1 scale.
- ``pass_at_k``: the unbiased pass@k estimator of Chen et al. 2021 (HumanEval), ``1 - C(n-c, k) / C(n, k)``
  for ``n`` samples of which ``c`` pass, computed as a product (no large binomials), and its mean over
  problems (``mean_pass_at_k``), on a 0-1 scale.

- ``bio_spans`` / ``entity_scores``: entity-level precision, recall and F1 for named-entity recognition
  (CoNLL-2000 ``conlleval``; seqeval): an entity counts only when its type and both boundaries match
  exactly (micro-averaged over entities, with per-type scores and a macro-F1 over types), on a 0-1
  scale. ``scheme="conlleval"`` reads BIO spans as conlleval and seqeval's default do (an ``I-X`` after
  ``O`` or another type starts an entity); ``scheme="iob2"`` as seqeval's ``mode="strict"`` does (an
  entity starts only at ``B-X``; a stray ``I-X`` is no entity).

The text metrics take ``predictions: list[str]`` and ``references: list[list[str]]`` (one or more per
example) and returns plain floats.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} vs {len(references)}"
        )
    if not predictions:
        raise ValueError("predictions: empty, nothing to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}]: expected a non-empty list of strings, got {refs!r}")


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:  # the v1.1 script: also 0 when both normalise to nothing (v2.0 would give 1)
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal (after ``normalize_answer``) to one of their references."""
    _check(predictions, references)
    hits = sum(
        any(normalize_answer(p) == normalize_answer(r) for r in refs)
        for p, refs in zip(predictions, references)
    )
    return hits / len(predictions)


def squad_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best token-level F1 against any reference (SQuAD v1.1)."""
    _check(predictions, references)
    return sum(max(_f1(p, r) for r in refs) for p, refs in zip(predictions, references)) / len(predictions)


def _ref_streams(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference slot; examples with fewer references repeat their last."""
    n = max(len(r) for r in references)
    return [[refs[min(j, len(refs) - 1)] for refs in references] for j in range(n)]


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU (0-100)."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), _ref_streams(references)).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus chrF (0-100)."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), _ref_streams(references)).score)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (best over references): ``{"rouge1", "rouge2", "rougeL"}``."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for p, refs in zip(predictions, references):
        scores = [scorer.score(r, p) for r in refs]
        for kind in kinds:
            totals[kind] += max(s[kind].fmeasure for s in scores)
    return {kind: total / len(predictions) for kind, total in totals.items()}


Span = tuple[str, int, int]  # (entity type, first token, one past the last token)


def bio_spans(tags: Sequence[str], scheme: str = "conlleval") -> list[Span]:
    """The entities of one BIO-tagged sentence as ``(type, start, end)`` spans (module docstring).

    Raises:
        ValueError: a tag that is not ``O``, ``B-X`` or ``I-X``, or an unknown scheme.
    """
    if scheme not in ("conlleval", "iob2"):
        raise ValueError(f"scheme: expected conlleval or iob2, got {scheme!r}")
    spans: list[Span] = []
    kind, start = "", -1
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not label):
            raise ValueError(f"tag {tag!r} at token {i}: expected O, B-<type> or I-<type>")
        continues = prefix == "I" and label == kind and start >= 0
        if start >= 0 and not continues:
            spans.append((kind, start, i))
            kind, start = "", -1
        if prefix == "B" or (prefix == "I" and not continues and scheme == "conlleval"):
            kind, start = label, i
    return spans


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str = "conlleval"
) -> dict[str, Any]:
    """Entity-level scores of predicted tag sequences against gold ones (one list of tags per sentence).

    Returns:
        ``{"precision", "recall", "f1", "macro_f1", "per_type": {type: {precision, recall, f1,
        support}}, "n_gold", "n_predicted", "n_correct"}``; precision (recall) is 0 when nothing is
        predicted (in the gold), as seqeval's ``zero_division=0``.

    Raises:
        ValueError: different numbers of sentences, or a sentence whose two sequences differ in length.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"gold and predicted differ in sentences: {len(gold)} vs {len(predicted)}")
    true_spans: set[tuple[int, Span]] = set()
    pred_spans: set[tuple[int, Span]] = set()
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        true_spans |= {(i, s) for s in bio_spans(g, scheme)}
        pred_spans |= {(i, s) for s in bio_spans(p, scheme)}

    def prf(t: set, p: set) -> dict[str, float]:
        correct = len(t & p)
        precision = correct / len(p) if p else 0.0
        recall = correct / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}

    types = sorted({s[0] for _, s in true_spans | pred_spans})
    per_type = {
        k: prf({x for x in true_spans if x[1][0] == k}, {x for x in pred_spans if x[1][0] == k})
        for k in types
    }
    total = prf(true_spans, pred_spans)
    return {
        "precision": total["precision"],
        "recall": total["recall"],
        "f1": total["f1"],
        "macro_f1": sum(v["f1"] for v in per_type.values()) / len(types) if types else 0.0,
        "per_type": per_type,
        "n_gold": len(true_spans),
        "n_predicted": len(pred_spans),
        "n_correct": len(true_spans & pred_spans),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n`` (``c`` correct)
    is correct: ``1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (Chen et al. 2021, fig. 3).

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """``{"pass@k": mean over problems}`` from ``(n, c)`` per problem, for each ``k`` no larger than every
    problem's ``n`` (a larger ``k`` is skipped: it cannot be estimated)."""
    if not counts:
        raise ValueError("counts: empty, nothing to score")
    smallest = min(n for n, _ in counts)
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks if k <= smallest
    }


GENERATION_METRICS = ("exact_match", "f1", "bleu", "chrf", "rouge")


def score_generations(
    predictions: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str]
) -> dict[str, float]:
    """The named metrics (``GENERATION_METRICS``) as one flat dict; ``rouge`` adds rouge1/rouge2/rougeL."""
    out: dict[str, float] = {}
    for name in metrics:
        if name == "exact_match":
            out[name] = exact_match(predictions, references)
        elif name == "f1":
            out[name] = squad_f1(predictions, references)
        elif name == "bleu":
            out[name] = corpus_bleu(predictions, references)
        elif name == "chrf":
            out[name] = corpus_chrf(predictions, references)
        elif name == "rouge":
            out.update(rouge(predictions, references))
        else:
            raise ValueError(f"metric {name!r}: valid: {', '.join(GENERATION_METRICS)}")
    return out
