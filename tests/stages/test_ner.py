"""NER as token classification: first-subword label alignment on hand cases, the token head learning a
toy tagging task, and ``finetune.ner`` end to end on tiny CoNLL files written here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmforge.stages.finetune.ner import IGNORE, as_tags, encode_words

PERSONS = "alice bob carol dave erin frank".split()
PLACES = [["paris"], ["rome"], ["san", "jose"], ["new", "york"]]
FILLER = "we met in the at and then saw went to with today".split()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


def hand_tokenizer():
    """A WordPiece tokenizer with a hand-written vocabulary: ``yorker`` → ``york ##er``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[UNK]", "[CLS]", "[SEP]", "<|bos|>", "<|eos|>", "<|pad|>", "new", "york", "##er", "rocks", "!"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def test_first_subword_alignment_hand_cases() -> None:
    tok = hand_tokenizer()
    # "new yorker rocks!" → [CLS] new york ##er rocks ! [SEP]; only each word's first subword is labelled
    (e,) = encode_words(tok, [["new", "yorker", "rocks!"]], [[1, 2, 0]], "encoder", 64)
    assert e.ids == [1, 6, 7, 8, 9, 10, 2]
    assert e.labels == [IGNORE, 1, 2, IGNORE, 0, IGNORE, IGNORE]
    assert e.first == [1, 2, 4]
    # a decoder frames the sentence with <|bos|> ... <|eos|>; positions are the same
    (d,) = encode_words(tok, [["new", "yorker", "rocks!"]], [[1, 2, 0]], "decoder", 64)
    assert d.ids == [3, 6, 7, 8, 9, 10, 4] and d.first == [1, 2, 4]
    # block_size 4 keeps two subwords: the third word is cut off (-1, predicted O)
    (t,) = encode_words(tok, [["new", "yorker", "rocks!"]], [[1, 2, 0]], "encoder", 4)
    assert t.ids == [1, 6, 7, 2] and t.labels == [IGNORE, 1, 2, IGNORE] and t.first == [1, 2, -1]
    assert as_tags([[0, 1, -1]], ["B-x", "O"]) == [["B-x", "O", "O"]]
    # an unknown word is one [UNK] subword, still labelled; unlabelled sentences carry no label
    (u,) = encode_words(tok, [["zzz", "new"]], None, "encoder", 64)
    assert u.ids == [1, 0, 6, 2] and u.first == [1, 2] and set(u.labels) == {IGNORE}
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        encode_words(tok, [["new", "york"]], [[0]], "encoder", 64)


def test_alignment_with_byte_level_bpe() -> None:
    """With byte-level BPE (leading-space marks, words split in several pieces) every word's subwords
    run from its first position to the next word's and decode back to the word."""
    from lmforge.tokenizer.train import train_bpe

    rng = random.Random(0)
    tok = train_bpe(
        [" ".join(rng.choice(FILLER + PERSONS) for _ in range(10)) for _ in range(50)], vocab_size=300
    )
    words = ["@alice", "went", "to", "Tokyo!!", "#unbelievable", "http://t.co/x"]
    (e,) = encode_words(tok, [words], [[0] * len(words)], "decoder", 128)
    assert all(f > 0 for f in e.first) and e.first == sorted(e.first)
    ends = [*e.first[1:], len(e.ids) - 1]
    for word, a, b in zip(words, e.first, ends):
        assert tok.decode(e.ids[a:b]).strip() == word
    assert sum(y != IGNORE for y in e.labels) == len(words)


def toy_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences with one person (B-person) and one place (B-location, I-location for two words)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PERSONS), rng.choice(PLACES)
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 3))]
        tags = ["O"] * len(words)
        words += [person, rng.choice(FILLER)]
        tags += ["B-person", "O"]
        words += place
        tags += ["B-location"] + ["I-location"] * (len(place) - 1)
        out.append((words, tags))
    return out


def tiny_checkpoint(root: Path, arch: str, kind: str = "bpe") -> Path:
    """An untrained 1-layer model of ``arch`` with a tokenizer of ``kind`` trained on the toy vocabulary."""
    from lmforge.model.checkpoint import build_model, save_checkpoint
    from lmforge.model.config import ModelConfig
    from lmforge.tokenizer.train import TokenizerSpec, save_tokenizer, train_tokenizer

    rng = random.Random(1)
    words = FILLER + PERSONS + [w for p in PLACES for w in p]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    tok = train_tokenizer(corpus, TokenizerSpec(kind, vocab_size=300))
    tok_path = save_tokenizer(tok, root)
    mcfg = ModelConfig(
        arch=arch, vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, n_embd=32
    )
    save_checkpoint(root / arch, build_model(mcfg), mcfg, tokenizer_path=tok_path)
    return root / arch


def test_token_head_learns_a_toy_tagging_task(tmp_path: Path) -> None:
    """Trunk + ``TokenClassificationHead`` trained directly: the loss falls and entity F1 rises."""
    import torch

    from lmforge.eval.metrics import entity_scores
    from lmforge.model.checkpoint import load_model
    from lmforge.stages.finetune.ner import build_tagger, predict_tags, tag_logits
    from lmforge.tokenizer.texts import pad_batch
    from lmforge.tokenizer.train import load_tokenizer, special_id

    torch.manual_seed(0)
    trunk, mcfg = load_model(tiny_checkpoint(tmp_path, "encoder"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    labels = ["B-location", "B-person", "I-location", "O"]
    train, dev = toy_sentences(200, 1), toy_sentences(40, 2)

    def enc(sentences: list) -> list:
        tags = [[labels.index(t) for t in g] for _, g in sentences]
        return encode_words(tok, [w for w, _ in sentences], tags, "encoder", 32)

    x_train, x_dev = enc(train), enc(dev)
    model = build_tagger(trunk, len(labels))

    def batch_of(rows):
        idx, mask = pad_batch([e.ids for e in rows], special_id(tok, "pad"))
        y = torch.full(idx.shape, IGNORE)
        for i, e in enumerate(rows):
            y[i, : len(e.labels)] = torch.tensor(e.labels)
        return idx, mask, y

    def dev_f1() -> tuple[float, float]:
        predicted, loss = predict_tags(model, x_dev, batch_of, 32)
        return entity_scores([g for _, g in dev], as_tags(predicted, labels))["f1"], loss

    f1_before, loss_before = dev_f1()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(150):
        idx, mask, y = batch_of(rng.sample(x_train, 16))
        loss = torch.nn.functional.cross_entropy(tag_logits(model, idx, mask).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    f1_after, loss_after = dev_f1()
    assert loss_after < 0.3 * loss_before
    assert f1_before < 0.2 and f1_after > 0.9


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(*s)) + "\n" for s in sentences))
    return path


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_ner_stage_end_to_end(tmp_path: Path, arch: str) -> None:
    from lmforge.cli import main

    model = tiny_checkpoint(tmp_path, arch)
    files = {
        split: write_conll(tmp_path / f"{split}.conll", toy_sentences(n, seed))
        for split, n, seed in (("train", 200, 1), ("dev", 40, 2), ("test", 40, 3))
    }
    out = tmp_path / "ner"
    args = ["finetune", "ner", "--model", str(model), "--out", str(out), "-q", "--device", "cpu"]
    args += [
        "--threads",
        "1",
        "--max_steps",
        "120",
        "--eval_every",
        "40",
        "--lr",
        "3e-3",
        "--warmup_steps",
        "5",
    ]
    args += [f"--{split}={path}" for split, path in files.items()]
    crf = pytest.importorskip("sklearn_crfsuite", reason="sklearn-crfsuite is not installed") is not None
    assert main([*args, "--crf_baseline", str(crf).lower()]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    assert manifest["stage"] == "finetune.ner" and manifest["status"] == "complete"
    assert m["test_sentences"] == 40 and m["truncated_words"] == 0
    if arch == "encoder":  # bidirectional: every word's tag is learnable
        assert m["test_f1"] > 0.9 and m["dev_f1"] > 0.9
    else:  # causal: a word's first subword sees the left context only; still far above nothing
        assert m["test_f1"] > 0.5
    assert {"test_precision", "test_recall", "test_f1_person", "test_f1_location"} <= set(m)
    assert m["baseline_lookup_test_f1"] == 1.0  # the toy names all occur in training
    assert "baseline_crf_test_f1" in m
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "f1" in r]
    assert evals[0]["step"] == 0 and evals[0]["f1"] < m["dev_f1"]  # F1 rose from the untrained head
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    final = json.loads((out / "ckpt" / "final.json").read_text())
    best = out / "ckpt" / final["best"]
    assert final["best_step"] == m["best_step"] and (best / "heads.safetensors").is_file()
    meta = json.loads((best / "finetune.json").read_text())
    assert meta["method"] == "ner" and meta["labels"]["ner"] == ["B-location", "B-person", "I-location", "O"]
    tables = json.loads((out / "report.json").read_text())["tables"]
    assert [row[0] for row in tables[0]["rows"]][:2] == ["fine-tuned transformer", "most-frequent tag"]
    assert main(args + ["--crf_baseline", str(crf).lower()]) == 0  # cached: same manifest
    assert json.loads((out / "manifest.json").read_text())["metrics"] == m


def test_init_embeddings_from_word2vec(tmp_path: Path) -> None:
    """``init_embeddings: word2vec`` sets the row of every word of a word-level vocabulary, then trains."""
    pytest.importorskip("gensim", reason="gensim is not installed")
    from lmforge.cli import main

    model = tiny_checkpoint(tmp_path, "encoder", kind="word")
    train = write_conll(tmp_path / "train.conll", toy_sentences(100, 1))
    out = tmp_path / "ner"
    args = ["finetune", "ner", "--model", str(model), "--out", str(out), "-q", "--device", "cpu"]
    args += [
        "--threads",
        "1",
        "--max_steps",
        "10",
        "--eval_every",
        "10",
        f"--train={train}",
        "--dev=",
        "--test=",
    ]
    args += ["--crf_baseline", "false", "--init_embeddings", "word2vec"]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    words = set(FILLER + PERSONS + [w for p in PLACES for w in p])
    assert m["init_embedding_rows"] == len(words)  # every toy word is in the vocabulary and the vectors
    assert m["dev_sentences"] > 0 and m["test_sentences"] == 0  # dev held out of train; scored on dev


def test_ner_config_errors(tmp_path: Path) -> None:
    from lmforge.config import ConfigError
    from lmforge.stages.finetune.ner import Config

    with pytest.raises(ConfigError, match="train"):
        Config(train="").validate()
    with pytest.raises(ConfigError, match="crf_iterations"):
        Config(crf_iterations=0).validate()
