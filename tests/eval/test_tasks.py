"""Tasks: MC scoring picks the answer a model is built to prefer (raw and length-normalised),
classification and generation scoring, YAML task files, and the built-in loaders on ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lmforge.eval.records import Doc
from lmforge.eval.tasks import LM, Task, evaluate_task, load_task
from lmforge.tokenizer.train import train_bpe

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
WORDS = "cat dog bird fish tree house car road sun moon".split()


@pytest.fixture(scope="module")
def tok():
    return train_bpe([" ".join(WORDS) * 3, " ".join(reversed(WORDS)) * 3] * 10, vocab_size=300)


class Prefers(nn.Module):
    """Gives every token of ``liked`` a logit of +8 at every position, everything else 0."""

    def __init__(self, vocab: int, liked: set[int], block_size: int = 64):
        super().__init__()
        self.config = type("C", (), {"block_size": block_size, "vocab_size": vocab})()
        bias = torch.zeros(vocab)
        bias[list(liked)] = 8.0
        self.bias = nn.Parameter(bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*idx.shape, -1)


def lm_liking(tok, text: str) -> LM:
    liked = set(tok.encode(text, add_special_tokens=False).ids)
    return LM(Prefers(tok.get_vocab_size(), liked), tok, bos_id=0, batch_size=3)


def test_mc_picks_the_preferred_answer_raw_and_normalised(tok) -> None:
    lm = lm_liking(tok, " cat dog")
    docs = [Doc(f"Q{i}?", ["sun moon", "cat dog", "tree"], 1) for i in range(4)]
    docs.append(Doc("Q?", ["cat dog", "road"], 0))
    r = evaluate_task(lm, Task("t", "multiple_choice", docs), k=2)
    assert r["metrics"] == {"acc": 1.0, "acc_norm": 1.0} and r["n"] == 5
    assert r["example"].count("cat dog") == 2  # two shots with their answers


def test_loglikelihood_sums_the_continuation_tokens(tok) -> None:
    model = Prefers(tok.get_vocab_size(), {5})
    lm = LM(model, tok, bos_id=0)
    ((ll, greedy),) = lm.loglikelihood([("cat", " dog")])
    n = len(lm.pair_ids("cat", " dog")[1])
    logp = torch.log_softmax(model.bias, -1)
    expected = sum(logp[t].item() for t in lm.pair_ids("cat", " dog")[1])
    assert n >= 1 and ll == pytest.approx(expected) and not greedy


def test_classification_reports_accuracy_and_macro_f1(tok) -> None:
    lm = lm_liking(tok, " dog")
    docs = [Doc(f"T{i}:", ["cat", "dog"], g) for i, g in enumerate([1, 1, 0, 1])]
    m = evaluate_task(lm, Task("c", "classification", docs, labels=("neg", "pos")))["metrics"]
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((0 + 2 * 0.75 / 1.75) / 2)


def test_generation_task_and_yaml_task_file(tok, tmp_path: Path) -> None:
    from lmforge.model.config import ModelConfig
    from lmforge.model.decoder import Decoder

    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=16)
    )
    lm = LM(model, tok, bos_id=0)
    rows = [{"question": "Where?", "answer": "sun sun"}, {"question": "What?", "answer": ["moon", "sun"]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.yaml").write_text(
        "kind: generation\npath: d.jsonl\ntemplate: 'Q: {question}\\nA:'\nmetrics: [exact_match, f1]\n"
        "max_new_tokens: 2\nuntil: ['\\n']\n"
    )
    task = load_task(str(tmp_path / "t.yaml"))
    assert task.name == "t" and task.docs[1].references == ["moon", "sun"]
    r = evaluate_task(lm, task, k=1)
    assert 0 <= r["metrics"]["exact_match"] <= 1 and r["example"].startswith("Q: ")
    mc = [{"q": "x", "options": ["cat", "sun"], "label": "B"}]
    (tmp_path / "m.jsonl").write_text(json.dumps(mc[0]))
    (tmp_path / "m.yaml").write_text("path: m.jsonl\ntemplate: '{q}'\nchoices: options\nanswer: label\n")
    assert load_task(str(tmp_path / "m.yaml")).docs[0].gold == 1
    (tmp_path / "bad.yaml").write_text("path: m.jsonl\ntemplat: x\n")
    with pytest.raises(ValueError, match="did you mean 'template'"):
        load_task(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nope")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (only on the development machine)")
@pytest.mark.parametrize(
    "name,kind",
    [
        ("hellaswag", "multiple_choice"),
        ("arc_easy", "multiple_choice"),
        ("boolq", "multiple_choice"),
        ("sst2", "classification"),
        ("squad", "generation"),
        ("gsm8k", "generation"),
        ("multi30k_en_de", "generation"),
        ("europarl_en_fr", "generation"),
    ],
)
def test_builtin_loaders_read_the_shared_files(name: str, kind: str) -> None:
    task = load_task(name, data_dir=SHARED, limit=5)
    assert task.kind == kind and len(task.docs) == 5
    d = task.docs[0]
    if kind == "generation":
        assert d.references and all(d.references)
    else:
        assert 0 <= d.gold < len(d.choices)
    if name == "hellaswag":
        assert len(d.choices) == 4 and d.query.startswith("Roof shingle removal:")
    if name == "gsm8k":
        assert d.references == ["72"]
