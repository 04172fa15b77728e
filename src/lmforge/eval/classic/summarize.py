"""Classic summarization baselines, scored by ROUGE beside the model (``eval/baselines.py``).

Code → description (``mbpp_summaries``; they read ``Doc.fields["code"]`` and ``["name"]``):

- ``name-template``: the words of the function's name (``remove_first_Occ`` → "remove first occ"),
  preceded by the training descriptions' most frequent first word ("find") unless the name already
  starts with a word some training description starts with (a verb such as "remove"): a summary made
  of the program's own identifier terms, as the term-based summaries of Haiduc et al. 2010 are.
- ``tfidf-nn``: nearest-neighbour retrieval (as in Liu et al. 2018's NNGen for commit messages): each
  program becomes TF-IDF weights over its identifier pieces and keywords; the description of the most
  cosine-similar training program is the output.

Body → lead (``wikitext_leads``; they read ``Doc.fields["body_sentences"]``):

- ``lead-k``: the body's first ``k`` sentences, ``k`` the median number of sentences of the training
  leads (Lead-3 of news summarization, with the length fitted to this target).
- ``textrank``: TextRank (Mihalcea & Tarau 2004): sentences are nodes, edge weight their word overlap
  ``|Si ∩ Sj| / (log|Si| + log|Sj|)``, PageRank (damping 0.85) ranks them; the top ``k`` (the same
  fitted ``k``), in document order.

Each fits on the task's training split (``fewshot_pool``) only and never reads the evaluated docs'
references.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence

from lmforge.errors import InputError
from lmforge.eval.baselines import Baseline
from lmforge.eval.loaders_summarize import split_sentences
from lmforge.eval.records import Doc
from lmforge.eval.tasks import Task

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def identifier_words(name: str) -> list[str]:
    """Lower-cased pieces of an identifier: snake_case and camelCase split (``maxSubArray_sum`` →
    ``["max", "sub", "array", "sum"]``)."""
    return [w.lower() for part in name.split("_") for w in _CAMEL.findall(part)]


def code_tokens(code: str) -> list[str]:
    """Tokens of a program for retrieval: each identifier or keyword, lower-cased, then its pieces when
    it has more than one (``min_cost`` → ``min_cost min cost``); numbers kept; punctuation dropped."""
    out = []
    for tok in _IDENT.findall(code):
        pieces = identifier_words(tok) if not tok.isdigit() else [tok]
        out.append(tok.lower())
        if len(pieces) > 1:
            out += pieces
    return out


def _pool(task: Task) -> list[Doc]:
    if not task.fewshot_pool:
        raise InputError(f"task {task.name}: this baseline fits on the task's training split; it has none")
    return task.fewshot_pool


def first_words(descriptions: Sequence[str]) -> Counter[str]:
    """How many of ``descriptions`` start with each (lower-cased) word."""
    return Counter(d.split()[0].lower() for d in descriptions if d.split())


def name_template(name: str, starts: Counter[str]) -> str:
    """The words of the function ``name``, after the most frequent of ``starts`` unless the first word
    is one of ``starts`` (``min_cost`` → "find min cost"; ``remove_occ`` → "remove occ")."""
    words = identifier_words(name)
    if starts and (not words or words[0] not in starts):
        words = [starts.most_common(1)[0][0], *words]
    return " ".join(words)


def run_name_template(task: Task) -> list[str]:
    starts = first_words([d.references[0] for d in _pool(task)])
    return [name_template(d.fields["name"], starts) for d in task.docs]


def nearest_descriptions(
    train_code: Sequence[str], train_text: Sequence[str], code: Sequence[str]
) -> list[str]:
    """For each program of ``code``, the ``train_text`` of the TF-IDF-cosine-nearest ``train_code``
    (ties: the first)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=code_tokens, sublinear_tf=True)
    train = vec.fit_transform(train_code)
    sims = (vec.transform(code) @ train.T).toarray()  # rows are L2-normalised: a cosine
    return [train_text[int(row.argmax())] for row in sims]


def run_tfidf_nn(task: Task) -> list[str]:
    pool = _pool(task)
    return nearest_descriptions(
        [d.fields["code"] for d in pool],
        [d.references[0] for d in pool],
        [d.fields["code"] for d in task.docs],
    )


def lead_length(leads: Sequence[str]) -> int:
    """The median number of sentences of the training ``leads`` (at least 1)."""
    return max(1, round(statistics.median(len(split_sentences(x)) for x in leads)))


def lead_k(sentences: Sequence[str], k: int) -> str:
    """The first ``k`` sentences, joined by spaces."""
    return " ".join(sentences[:k])


_WORD = re.compile(r"\w+")


def _sentence_words(sentence: str) -> set[str]:
    return {w for w in _WORD.findall(sentence.lower()) if w != "unk"}


def textrank(sentences: Sequence[str], k: int, *, damping: float = 0.85) -> str:
    """The ``k`` highest-PageRank sentences under TextRank's overlap similarity (module docstring), in
    their original order. Sentences of fewer than two words get no edges (``log 1 = 0``)."""
    import networkx as nx

    if len(sentences) <= k:
        return " ".join(sentences)
    words = [_sentence_words(s) for s in sentences]
    graph = nx.Graph()
    graph.add_nodes_from(range(len(sentences)))
    for i in range(len(words)):
        if len(words[i]) < 2:
            continue
        for j in range(i + 1, len(words)):
            overlap = len(words[i] & words[j])
            if overlap and len(words[j]) >= 2:
                graph.add_edge(i, j, weight=overlap / (math.log(len(words[i])) + math.log(len(words[j]))))
    rank = nx.pagerank(graph, alpha=damping, weight="weight")
    top = sorted(range(len(sentences)), key=lambda i: (-rank[i], i))[:k]
    return " ".join(sentences[i] for i in sorted(top))


def run_lead_k(task: Task) -> list[str]:
    k = lead_length([d.references[0] for d in _pool(task)])
    return [lead_k(d.fields["body_sentences"], k) for d in task.docs]


def run_textrank(task: Task) -> list[str]:
    k = lead_length([d.references[0] for d in _pool(task)])
    return [textrank(d.fields["body_sentences"], k) for d in task.docs]


NAME_TEMPLATE = Baseline(
    "name-template",
    ("generation",),
    ("code", "name"),
    run_name_template,
    "code summary: the function name's words, after the usual first word of the training descriptions",
)
TFIDF_NN = Baseline(
    "tfidf-nn",
    ("generation",),
    ("code",),
    run_tfidf_nn,
    "code summary: the description of the TF-IDF-nearest training program",
)
LEAD_K = Baseline(
    "lead-k",
    ("generation",),
    ("body_sentences",),
    run_lead_k,
    "article summary: the body's first k sentences (k: median training lead length)",
)
TEXTRANK = Baseline(
    "textrank",
    ("generation",),
    ("body_sentences",),
    run_textrank,
    "article summary: TextRank's top k sentences (Mihalcea & Tarau 2004)",
)
