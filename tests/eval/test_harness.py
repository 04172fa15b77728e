"""lm-evaluation-harness parity: the harness, running our registered model on a local task file,
gives the same accuracy as our own evaluator on the same documents (0-shot, and 1-shot from a one-doc
few-shot split so both pick the same example)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lmforge.eval.records import Doc  # noqa: E402
from lmforge.eval.tasks import LM, Task, evaluate_task, prompts  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.decoder import Decoder  # noqa: E402
from lmforge.tokenizer.train import train_bpe  # noqa: E402

WORDS = "the cat sat on a mat and dog ran to park sun moon red blue green".split()
ROWS = [
    {"q": f"Which word follows {a}?", "choices": [b, c, d], "label": i % 3}
    for i, (a, b, c, d) in enumerate(zip(WORDS, WORDS[1:], WORDS[2:], WORDS[3:]))
]
TASK_YAML = """task: lmforge_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.mark.slow
def test_harness_matches_our_evaluator(tmp_path: Path, monkeypatch, one_torch_thread) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lmforge.eval.harness import LmforgeLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[1:]))
    (tmp_path / "train.jsonl").write_text(json.dumps(ROWS[0]))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "parity.yaml").write_text(
        TASK_YAML.format(test=tmp_path / "test.jsonl", train=tmp_path / "train.jsonl")
    )

    tok = train_bpe([" ".join(WORDS) * 3, " ".join(reversed(WORDS)) * 3] * 10, vocab_size=300)
    torch.manual_seed(0)
    model = Decoder(
        ModelConfig(vocab_size=tok.get_vocab_size(), block_size=128, n_layer=1, n_head=2, n_embd=32)
    )
    with torch.no_grad():
        model.tok_emb.weight.mul_(30)  # confident, varied preferences: accuracy is not a coin toss
    lm = LM(model.eval(), tok, bos_id=0, batch_size=4)

    docs = [Doc(f"{r['q']}\nAnswer:", r["choices"], r["label"]) for r in ROWS[1:]]
    pool = [Doc(f"{ROWS[0]['q']}\nAnswer:", ROWS[0]["choices"], ROWS[0]["label"])]
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    asked: list[tuple[str, str]] = []

    class Recording(LmforgeLM):
        def loglikelihood(self, requests):
            asked.extend(tuple(r.args) for r in requests)
            return super().loglikelihood(requests)

    for k in (0, 1):
        task = Task("parity", "multiple_choice", docs, fewshot_pool=pool)
        ours = evaluate_task(lm, task, k=k)["metrics"]
        asked.clear()
        out = lm_eval.simple_evaluate(
            model=Recording.from_lm(lm),
            tasks=["lmforge_parity"],
            num_fewshot=k,
            task_manager=manager,
            bootstrap_iters=0,
            log_samples=False,
        )
        theirs = out["results"]["lmforge_parity"]
        # the same (context, continuation) requests, so the same log-likelihoods and the same scores
        expected = {(ctx, " " + c) for ctx, d in zip(prompts(task, k, 0), docs) for c in d.choices}
        assert set(asked) == expected and len(asked) == len(expected)
        assert theirs["acc,none"] == pytest.approx(ours["acc"]), k
        assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"]), k
