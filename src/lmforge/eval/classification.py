"""Classification metrics and the bag-of-words baseline every classifier is compared with.

``classification_metrics`` computes accuracy, macro-F1, per-class precision/recall/F1/support and the
confusion matrix from label lists (rows = true label, columns = predicted label). A class that is
never predicted has precision 0; one that never occurs has recall 0 (scikit-learn's
``zero_division=0`` convention). Macro-F1 averages F1 over every class in ``labels``.

``bow_baseline`` trains a bag-of-words logistic regression (scikit-learn ``CountVectorizer`` of word
unigrams and bigrams → ``LogisticRegression``) on the same training split and scores it on the same
evaluation split: the number that ignores word order and context, which a fine-tuned transformer
should beat (``bow_predict`` returns its predicted labels, for the eval stage's baselines). ``preprocess`` applies the classic pipeline first (stop-word removal and/or lemmatisation,
``eval/classic_text.py``); the default ``"none"`` keeps the raw text. ``static_embeddings.py`` has the
other classic baseline: logistic regression on averaged word2vec vectors.

``flat_metrics`` turns a result into the flat ``name → number`` mapping a stage manifest holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: true labels.
        y_pred: predicted labels, same length.
        labels: the classes in display order (default: sorted union of both lists).

    Returns:
        ``{"accuracy", "macro_f1", "labels", "per_class": {label: {precision, recall, f1, support}},
        "confusion": [[count of (true i, predicted j)]], "n"}``.

    Raises:
        ValueError: lists of different lengths, an empty list, or a label outside ``labels``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    if not y_true:
        raise ValueError("no examples to score")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {labels}")
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        confusion[index[t]][index[p]] += 1
    per_class: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(k))
        support = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    correct = sum(confusion[i][i] for i in range(k))
    return {
        "accuracy": correct / len(y_true),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / k,
        "labels": labels,
        "per_class": per_class,
        "confusion": confusion,
        "n": len(y_true),
    }


def bow_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    eval_texts: Sequence[str],
    eval_labels: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    preprocess: str = "none",
) -> dict[str, Any]:
    """Train the bag-of-words logistic regression on the train split; score it on the eval split.

    Features: counts of lower-cased word unigrams and bigrams (``CountVectorizer(ngram_range=(1, 2))``,
    tokens of two or more word characters, plus single characters so "a" or "!"-free texts still
    vectorise). Classifier: ``LogisticRegression(C=1.0, max_iter=1000)``, L2-regularised. ``preprocess``:
    ``none``, ``stopwords``, ``lemmas`` or ``stopwords+lemmas`` (``classic_text.PREPROCESS``), applied to
    both splits.

    Returns:
        ``classification_metrics`` of its predictions on the eval split.

    Raises:
        ValueError: fewer than two classes in the training labels, or empty splits.
    """
    predicted = bow_predict(train_texts, train_labels, eval_texts, seed=seed, preprocess=preprocess)
    return classification_metrics(list(eval_labels), predicted, labels)


def bow_predict(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    eval_texts: Sequence[str],
    *,
    seed: int = 0,
    preprocess: str = "none",
) -> list[str]:
    """The labels ``bow_baseline``'s classifier (same features, same fit) predicts for ``eval_texts``.

    Raises:
        ValueError: fewer than two classes in the training labels, or empty splits.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(train_labels)) < 2:
        raise ValueError(
            f"the baseline needs at least two classes in training, got {sorted(set(train_labels))}"
        )
    from lmforge.eval.classic_text import preprocess_all

    train_texts, eval_texts = preprocess_all(train_texts, preprocess), preprocess_all(eval_texts, preprocess)
    vectorizer = CountVectorizer(ngram_range=(1, 2), lowercase=True, token_pattern=r"(?u)\b\w+\b")
    x_train = vectorizer.fit_transform(list(train_texts))
    classifier = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    classifier.fit(x_train, list(train_labels))
    return [str(p) for p in classifier.predict(vectorizer.transform(list(eval_texts)))]


def flat_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{prefix}accuracy``, ``{prefix}macro_f1`` and ``{prefix}precision_<label>`` / ``recall_<label>``."""
    out = {f"{prefix}accuracy": result["accuracy"], f"{prefix}macro_f1": result["macro_f1"]}
    for label, scores in result["per_class"].items():
        out[f"{prefix}precision_{label}"] = scores["precision"]
        out[f"{prefix}recall_{label}"] = scores["recall"]
    return out


def confusion_table(result: dict[str, Any]) -> dict[str, Any]:
    """The confusion matrix as a report table: a header of predicted labels, one row per true label."""
    labels = result["labels"]
    return {
        "title": "confusion matrix (rows: true label, columns: predicted)",
        "header": ["true \\ predicted", *labels],
        "rows": [[label, *row] for label, row in zip(labels, result["confusion"])],
    }


def per_class_table(result: dict[str, Any], title: str = "per-class scores") -> dict[str, Any]:
    """Per-class precision, recall, F1 and support as a report table."""
    rows = [
        [label, s["precision"], s["recall"], s["f1"], s["support"]]
        for label, s in result["per_class"].items()
    ]
    return {"title": title, "header": ["label", "precision", "recall", "f1", "support"], "rows": rows}
