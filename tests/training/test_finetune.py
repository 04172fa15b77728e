"""The shared fine-tuning library: the loop (trainable parameters change, frozen ones do not), a
separable toy task learned to ~100%, multi-task routing, hidden states, checkpoints with heads,
the chat mask of SFT batches, and the contrastive loss and retrieval metric."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.heads import hidden_states
from lmforge.training import finetune as ft
from lmforge.training.options import FinetuneOptions
from lmforge.training.step import token_loss

V = 24


def tiny(**kw) -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16, **kw))


def opts(**kw) -> FinetuneOptions:
    base = dict(max_steps=3, warmup_steps=0, eval_every=100, log_every=100, lr=1e-2, weight_decay=0.0)
    return FinetuneOptions(**{**base, **kw})


def lm_fit(model, steps=3, **kw):
    g = torch.Generator().manual_seed(1)
    data = torch.randint(3, V, (8, 9), generator=g)
    return ft.fit(
        model,
        opts(max_steps=steps, **kw),
        next_batch=lambda: ((data[:, :-1], data[:, 1:]), data[:, 1:].numel()),
        loss_sum=lambda b: token_loss(model(b[0]), b[1])[0],
        evaluate=lambda: {
            "val_loss": token_loss(model(data[:, :-1]), data[:, 1:])[0].item() / data[:, 1:].numel()
        },
        monitor="val_loss",
    )


def test_every_trainable_parameter_changes_and_frozen_ones_do_not():
    model = tiny(tie_embeddings=False)
    model.blocks[0].attn.requires_grad_(False)
    model.tok_emb.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = lm_fit(model)
    assert result.steps == 3
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == p.requires_grad, name


def test_lora_only_adapters_change():
    lora = pytest.importorskip("lmforge.model.lora", reason="the LoRA library is not there yet")
    model = tiny()
    lora.apply_lora(model, lora.LoraConfig(r=2, alpha=4.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm_fit(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    for name, p in model.named_parameters():
        assert (not torch.equal(before[name], p)) == (name in trainable), name


def test_l1_shrinks_weights():
    plain, sparse = tiny(), tiny()
    lm_fit(plain, steps=5)
    lm_fit(sparse, steps=5, l1=1.0)
    l1 = lambda m: sum(p.detach().abs().sum().item() for p in m.parameters() if p.ndim >= 2)  # noqa: E731
    assert l1(sparse) < l1(plain)


def ragged_fit(rows: int, grad_accum: int, **kw) -> tuple[list[float], Decoder]:
    """Fine-tune on 8 LM rows with very uneven supervised-token counts, ``rows`` per micro-batch; the
    per-step losses and the model."""
    g = torch.Generator().manual_seed(2)
    data = torch.randint(3, V, (8, 9), generator=g)
    mask = torch.arange(8)[None, :] >= torch.tensor([0, 7, 3, 6, 1, 7, 5, 2])[:, None]  # [8, 8] ragged
    parts = [slice(i, i + rows) for i in range(0, 8, rows)]
    order = iter(parts * 100)
    model, losses = tiny(), []

    def next_batch():
        s = next(order)
        return (data[s, :-1], data[s, 1:], mask[s]), int(mask[s].sum())

    ft.fit(
        model,
        opts(max_steps=4, batch_size=rows, grad_accum=grad_accum, **kw),
        next_batch=next_batch,
        loss_sum=lambda b: token_loss(model(b[0]), b[1], b[2])[0],
        evaluate=lambda: {"val_loss": 0.0},
        monitor="val_loss",
        log_metrics=lambda r: losses.append(r["loss"]) if "loss" in r else None,
    )
    return losses, model


def test_fit_micro_batch_times_accumulation_gives_one_trajectory():
    """The accumulation invariance on the loop fine-tuning and alignment run: 8 rows x 1, 4 x 2 and
    2 x 4 take the same steps although the micro-batches hold very different token counts."""
    reference, ref_model = ragged_fit(8, 1)
    for rows, accum in ((4, 2), (2, 4)):
        losses, model = ragged_fit(rows, accum)
        assert losses == pytest.approx(reference, rel=1e-5)
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    naive, _ = ragged_fit(2, 1)  # a different batch: the comparison above can fail
    assert naive != pytest.approx(reference, rel=1e-5)


def test_fit_trains_under_the_configured_dtype():
    seen = []
    model = tiny()
    data = torch.randint(3, V, (4, 9), generator=torch.Generator().manual_seed(3))

    def loss_sum(b):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return token_loss(model(b[0]), b[1])[0]

    def run(dtype):
        return ft.fit(
            model,
            opts(max_steps=2, dtype=dtype),
            next_batch=lambda: ((data[:, :-1], data[:, 1:]), data[:, 1:].numel()),
            loss_sum=loss_sum,
            evaluate=lambda: {"val_loss": 0.0},
            monitor="val_loss",
        )

    assert run("bf16").dtype == "bf16" and seen == [True, True]
    seen.clear()
    assert run("fp32").dtype == "fp32" and seen == [False, False]


def test_dtype_auto_measures_decoders_only(monkeypatch):
    from lmforge.training import precision

    monkeypatch.setattr(precision, "choose_cpu_dtype", lambda model, batch, block, vocab: ("bf16", {}))
    assert precision.training_dtype("auto", tiny(), "cpu") == "bf16"
    classifier = ft.TaskClassifier(tiny(), {"t": 2}, "last")
    assert precision.training_dtype("auto", classifier, "cpu") == "fp32"  # not a decoder: not timed
    assert precision.training_dtype("fp32", tiny(), "cpu") == "fp32"


def test_early_stopping_patience_and_best_selection():
    stop = ft.EarlyStopping("max", patience=2, min_delta=0.01)
    assert stop.update(0.5) and not stop.update(0.505) and not stop.stop
    assert not stop.update(0.4) and stop.stop and stop.best == 0.5
    values = iter([9.0, 1.0, 2.0, 3.0, 4.0])  # initial, then evaluations at steps 1..4

    model = tiny()
    result = ft.fit(
        model,
        opts(max_steps=10, eval_every=1, patience=3),
        next_batch=lambda: ((torch.randint(3, V, (2, 5)),), 2),
        loss_sum=lambda b: model(b[0]).float().square().mean() * 2,
        evaluate=lambda: {"val_loss": next(values)},
        monitor="val_loss",
    )
    assert result.stop_reason == "early_stop" and result.steps == 4 and result.best_step == 1
    run = result.run_metrics()  # what the stages report
    assert run == {"steps": 4, "best_step": 1, "train_loss": result.train_loss,
                   "train_time_s": result.train_time_s, "early_stopped": 1}  # fmt: skip


def test_a_monitored_loss_is_minimised_and_any_other_metric_maximised():
    for monitor, values in (
        ("accuracy", [0.1, 0.6, 0.5, 0.4, 0.3]),
        ("select_loss", [9.0, 1.0, 2.0, 3.0, 4.0]),
    ):
        model, scores = tiny(), iter(values)  # initial, then evaluations at steps 1..4
        result = ft.fit(
            model,
            opts(max_steps=10, eval_every=1, patience=3),
            next_batch=lambda: ((torch.randint(3, V, (2, 5)),), 2),
            loss_sum=lambda b, model=model: model(b[0]).float().square().mean() * 2,
            evaluate=lambda scores=scores, monitor=monitor: {monitor: next(scores)},
            monitor=monitor,
        )
        assert result.stop_reason == "early_stop" and result.best_step == 1, monitor
        assert result.best_metrics[monitor] == values[1]


def test_time_budget_stops_evaluates_and_saves_a_usable_checkpoint(tmp_path):
    import json
    import time

    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    model = tiny()
    g = torch.Generator().manual_seed(1)
    data = torch.randint(3, V, (8, 9), generator=g)
    calls = []

    def evaluate():
        calls.append(1)
        with torch.no_grad():
            return {"val_loss": token_loss(model(data[:, :-1]), data[:, 1:])[0].item() / data[:, 1:].numel()}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = ft.fit(  # any real step takes longer than a microsecond: the budget ends step 1
        model,
        opts(max_steps=1000, max_time_s=1e-6, eval_every=500),
        next_batch=lambda: ((data[:, :-1], data[:, 1:]), data[:, 1:].numel()),
        loss_sum=lambda b: token_loss(model(b[0]), b[1])[0],
        evaluate=evaluate,
        monitor="val_loss",
    )
    assert result.stop_reason == "time_budget" and result.steps == 1 < 1000
    assert result.run_metrics()["early_stopped"] == 0
    assert len(calls) == 2 and result.last_metrics != result.initial_metrics  # before, and at the stop
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    ft.save_best_and_last(
        tmp_path / "ckpt",
        model,
        result,
        lambda d: ft.save_finetuned(d, model, model.config, tokenizer_path=None),
    )
    final = json.loads((tmp_path / "ckpt" / "final.json").read_text())
    assert final["stop_reason"] == "time_budget" and final["last"] == final["best"] == "step_1"
    loaded, _ = load_model(resolve_checkpoint(tmp_path))
    torch.testing.assert_close(loaded(data[:, :-1]), model(data[:, :-1]))

    # a slow step (40 ms of waiting for data): the loop stops at the first step that ends past the budget
    model = tiny()
    steps = []

    def slow_batch():
        time.sleep(0.04)
        steps.append(1)
        return (data[:, :-1], data[:, 1:]), data[:, 1:].numel()

    result = ft.fit(
        model,
        opts(max_steps=1000, max_time_s=0.1, eval_every=1),
        next_batch=slow_batch,
        loss_sum=lambda b: token_loss(model(b[0]), b[1])[0],
        evaluate=lambda: {"val_loss": 1.0},
        monitor="val_loss",
    )
    assert result.stop_reason == "time_budget" and 1 <= result.steps == len(steps) <= 3  # 3 x 40 ms > 0.1 s
    assert result.train_time_s >= 0.1


def test_options_reject_a_negative_time_budget():
    from lmforge.config import ConfigError

    opts(max_time_s=0.0).validate()
    with pytest.raises(ConfigError, match="max_time_s.*>= 0"):
        opts(max_time_s=-1.0).validate()


def test_hidden_states_are_what_the_lm_head_reads():
    model = tiny()
    idx = torch.randint(0, V, (2, 7))
    hidden = hidden_states(model, idx)
    assert hidden.shape == (2, 7, 16)
    torch.testing.assert_close(model.lm_head(hidden), model(idx))
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.tok_emb.weight


def test_hidden_states_pass_token_types_to_an_encoder_only():
    from lmforge.model.heads import EncoderForPretraining

    torch.manual_seed(0)
    enc = EncoderForPretraining(ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16))
    idx = torch.randint(0, V, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2)
    torch.testing.assert_close(hidden_states(enc, idx, mask, types), enc.encoder(idx, mask, types))
    torch.testing.assert_close(hidden_states(enc, idx, mask), enc.encoder(idx, mask))
    assert not torch.allclose(hidden_states(enc, idx, mask, types), hidden_states(enc, idx, mask))
    with pytest.raises(ValueError, match="decoder"):
        hidden_states(tiny(), idx, None, types)


def separable(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Label 1 iff token 5 occurs (else token 6 does), amid random tokens 10..23."""
    rng = random.Random(seed)
    xs, ys = [], []
    for i in range(n):
        y = i % 2
        seq = [rng.randrange(10, V) for _ in range(rng.randint(3, 8))]
        seq.insert(rng.randrange(len(seq) + 1), 5 if y else 6)
        xs.append([0, *seq, 1])
        ys.append(y)
    return xs, ys


def test_separable_toy_task_reaches_full_accuracy():
    from lmforge.tokenizer.texts import pad_batch

    model = ft.TaskClassifier(tiny(), {"t": 2}, "last")
    x, y = separable(64, 0)
    x_dev, y_dev = separable(64, 1)
    g = torch.Generator().manual_seed(0)

    def next_batch():
        rows = torch.randint(0, len(x), (16,), generator=g).tolist()
        idx, mask = pad_batch([x[i] for i in rows], 2)
        return (idx, mask, torch.tensor([y[i] for i in rows])), len(rows)

    def evaluate():
        predicted, loss = ft.predict_classes(model, x_dev, y_dev, "t", pad_id=2)
        return {"accuracy": sum(p == t for p, t in zip(predicted, y_dev)) / len(y_dev), "val_loss": loss}

    result = ft.fit(
        model,
        opts(max_steps=80, eval_every=20, lr=1e-2, warmup_steps=5),
        next_batch=next_batch,
        loss_sum=lambda b: F.cross_entropy(model(b[0], b[1], "t"), b[2], reduction="sum"),
        evaluate=evaluate,
        monitor="accuracy",
        mode="max",
    )
    assert result.initial_metrics["accuracy"] < 0.8
    assert result.best_metrics["accuracy"] >= 0.97


def test_multitask_heads_route_each_row_to_its_task():
    model = ft.TaskClassifier(tiny(), {"a": 2, "b": 3}, "last").eval()
    idx = torch.randint(3, V, (4, 6))
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[1, 4:] = False
    tasks = ["a", "b", "a", "b"]
    routed = model.forward_routed(idx, mask, tasks)
    assert routed["a"][0].tolist() == [0, 2] and routed["b"][0].tolist() == [1, 3]
    assert routed["a"][1].shape == (2, 2) and routed["b"][1].shape == (2, 3)
    torch.testing.assert_close(routed["b"][1], model(idx, mask, "b")[[1, 3]])
    with torch.no_grad():
        model.heads["b"].out_proj.weight.add_(1.0)  # changing head b leaves task a untouched
    again = model.forward_routed(idx, mask, tasks)
    torch.testing.assert_close(again["a"][1], routed["a"][1])
    assert not torch.allclose(again["b"][1], routed["b"][1])


def test_checkpoint_with_heads_round_trips(tmp_path):
    from lmforge.model.checkpoint import load_model, resolve_checkpoint

    model = ft.TaskClassifier(tiny(), {"a": 2}, "last").eval()
    meta = {"method": "classify", "pooling": "last", "labels": {"a": ["neg", "pos"]}}
    result = lm_fit(model.trunk, steps=2)
    ft.save_best_and_last(
        tmp_path / "ckpt",
        model.trunk,
        result,
        lambda d: ft.save_finetuned(
            d, model.trunk, model.trunk.config, tokenizer_path=None, heads=model.heads, meta=meta
        ),
    )
    best = resolve_checkpoint(tmp_path)
    trunk, mcfg = load_model(best)  # a normal checkpoint: the heads are extra files
    heads, loaded_meta = ft.load_heads(best, mcfg)
    assert loaded_meta["labels"] == meta["labels"]
    again = ft.TaskClassifier(trunk, {"a": 2}, "last").eval()
    again.heads.load_state_dict(heads.state_dict())
    idx = torch.randint(3, V, (2, 5))
    mask = torch.ones_like(idx, dtype=torch.bool)
    torch.testing.assert_close(again(idx, mask, "a"), model(idx, mask, "a"))


@pytest.fixture(scope="module")
def chat_tok():
    from lmforge.tokenizer.train import train_bpe

    return train_bpe(
        ["hello there how are you", "fine thanks and you", "good day to you"] * 20, vocab_size=300
    )


def test_sft_rows_supervise_assistant_tokens_only(chat_tok):
    from lmforge.tokenizer.chat import render_chat
    from lmforge.training.batches import chat_rows, encode_conversations, lm_batch

    convs = [
        [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "fine thanks"}],
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "how are you"},
            {"role": "assistant", "content": "good"},
            {"role": "user", "content": "and you"},
            {"role": "assistant", "content": "good day"},
        ],
        [{"role": "user", "content": "no answer"}],  # nothing supervised: dropped
    ]
    examples, dropped = encode_conversations(chat_tok, convs, block_size=64)
    assert dropped == 1 and len(examples) == 2
    end = chat_tok.token_to_id("<|end|>")
    for packing in ("pad", "pack"):
        rows = chat_rows(examples, 64, packing)
        assert len(rows) == (1 if packing == "pack" else 2)
        x, y, m = lm_batch(rows, pad_id=2)
        supervised = y[m].tolist()
        expected = []
        for messages in convs[:2]:
            for msg in messages:
                if msg["role"] == "assistant":
                    expected += [*chat_tok.encode(msg["content"], add_special_tokens=False).ids, end]
        assert supervised == expected, packing
        assert not m[x == 2].any() or packing == "pack"
    ids, mask = render_chat(chat_tok, convs[0])
    assert examples[0] == (ids, mask)


def test_info_nce_and_recall_at_k():
    from lmforge.training.contrastive import info_nce, recall_at_k

    a = F.normalize(torch.eye(4), dim=-1)
    assert float(info_nce(a, a, temperature=0.01)) < 1e-3  # each row matches itself far better
    shuffled = a[[1, 0, 2, 3]]
    assert float(info_nce(a, shuffled, temperature=0.01)) > 10
    manual = F.cross_entropy(a @ shuffled.T / 0.5, torch.arange(4), reduction="sum")
    torch.testing.assert_close(info_nce(a, shuffled, 0.5, symmetric=False), manual)
    # queries 0 and 1 find one wrong candidate above their own, which ties with two others at 0
    r = recall_at_k(a, shuffled, (1, 2, 4))
    assert r == pytest.approx(
        {"recall_at_1": 0.5, "recall_at_2": (1 / 3 + 1 / 3 + 1 + 1) / 4, "recall_at_4": 1.0}
    )
    # fewer candidates than queries: query i's own candidate is targets[i]; queries 1 and 3 see two
    # candidates at 0 and find theirs first half the time
    r = recall_at_k(a, a[[2, 0]], (1,), targets=torch.tensor([1, 1, 0, 0]))
    assert r == {"recall_at_1": (1 + 0.5 + 1 + 0.5) / 4}


def test_info_nce_groups_take_shared_positives_out_of_the_negatives():
    from lmforge.training.contrastive import info_nce

    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    b[1] = b[0]  # rows 0 and 1 ask about the same passage
    groups = torch.tensor([7, 7, 1, 2])
    logits = a @ b.T / 0.5
    masked = logits.clone()
    masked[0, 1] = masked[1, 0] = float("-inf")
    target = torch.arange(4)
    want = F.cross_entropy(masked, target, reduction="sum") + F.cross_entropy(
        masked.T, target, reduction="sum"
    )
    torch.testing.assert_close(info_nce(a, b, 0.5, groups=groups), want / 2)
    assert float(info_nce(a, b, 0.5, groups=torch.arange(4))) == pytest.approx(float(info_nce(a, b, 0.5)))
    with pytest.raises(ValueError, match="groups"):
        info_nce(a, b, groups=torch.arange(3))


def test_declared_pooling_and_auto(tmp_path, caplog):
    import json

    from lmforge.errors import InputError

    assert ft.declared_pooling(tmp_path) is None
    assert ft.resolve_pooling("auto", tmp_path, "mean") == "mean"
    (tmp_path / "pooling.json").write_text(json.dumps({"mode": "cls", "normalize": True, "source": "st"}))
    assert ft.declared_pooling(tmp_path) == "cls"
    assert ft.resolve_pooling("auto", tmp_path, "mean") == "cls"
    assert ft.resolve_pooling("last", tmp_path, "mean") == "last"  # an explicit choice wins
    (tmp_path / "pooling.json").write_text(json.dumps({"mode": "max", "normalize": False}))
    assert ft.resolve_pooling("auto", tmp_path, "mean") == "mean" and "max" in caplog.text
    (tmp_path / "pooling.json").write_text(json.dumps({"mode": "mean", "normalize": True}))
    # classify / multitask: auto follows the declaration, else [CLS] (encoder) / last (decoder)
    assert ft.default_pooling("encoder", "auto", tmp_path) == "mean"
    assert ft.default_pooling("encoder", "auto", tmp_path / "none") == "cls"
    assert ft.default_pooling("decoder", "auto") == "last"
    (tmp_path / "pooling.json").write_text("{}")
    with pytest.raises(InputError, match="pooling.json"):
        ft.declared_pooling(tmp_path)


def test_sequence_length_and_max_len_validation():
    from lmforge.config import ConfigError
    from lmforge.training.options import SequenceOptions

    mcfg = ModelConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)
    assert ft.sequence_length(0, mcfg) == 16 and ft.sequence_length(8, mcfg) == 8
    with pytest.raises(ConfigError, match="max_len.*17.*block_size 16"):
        ft.sequence_length(17, mcfg)
    for bad in (-1, 2):
        with pytest.raises(ConfigError, match="max_len"):
            SequenceOptions(max_len=bad).validate()


def test_holdout_groups_keep_each_key_on_one_side():
    from lmforge.data.supervised import holdout, holdout_groups

    items = list(range(40))
    keys = [f"passage{i // 4}" for i in items]  # four items per key
    train, held = holdout_groups(items, keys, 0.3, seed=1)
    assert held and train and sorted(train + held) == items
    assert not {keys[i] for i in train} & {keys[i] for i in held}
    assert holdout_groups(items, [str(i) for i in items], 0.3, 1) == holdout(items, 0.3, 1)


def test_embed_keeps_order_and_cuts_to_max_len(chat_tok):
    from lmforge.model.heads import EncoderForPretraining
    from lmforge.training.contrastive import embed

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="encoder", vocab_size=chat_tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, n_embd=16
    )
    model = EncoderForPretraining(cfg, nsp=False)
    texts = ["hello there " * 12, "hi", "how are you", "hello there " * 12 + "more words here"]
    one_by_one = torch.cat([embed(model, chat_tok, [t], max_len=8) for t in texts])
    together = embed(model, chat_tok, texts, max_len=8, batch_size=2)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[0], together[3])  # identical first 6 tokens once cut to 8
    assert not torch.allclose(embed(model, chat_tok, texts[:1])[0], together[0])  # 0 = block_size


def test_text_framing_keeps_the_end_marker_when_cut(chat_tok):
    from lmforge.tokenizer.texts import encode_texts, pad_batch

    bos, eos = chat_tok.token_to_id("<|bos|>"), chat_tok.token_to_id("<|eos|>")
    cls, sep = chat_tok.token_to_id("[CLS]"), chat_tok.token_to_id("[SEP]")
    long = " ".join(["hello there how are you"] * 20)
    (dec,) = encode_texts(chat_tok, [long], "decoder", block_size=12)
    (enc,) = encode_texts(chat_tok, ["hi <|end|>"], "encoder", block_size=64)
    assert len(dec) == 12 and dec[0] == bos and dec[-1] == eos
    assert enc[0] == cls and enc[-1] == sep and chat_tok.token_to_id("<|end|>") not in enc  # text stays text
    idx, mask = pad_batch([[5, 6, 7], [8]], pad_id=2)
    assert idx.tolist() == [[5, 6, 7], [8, 2, 2]] and mask.tolist() == [[True] * 3, [True, False, False]]


def test_packing_is_first_fit_with_whole_examples():
    from lmforge.training.batches import chat_rows

    ex = [([0] * n, [True] * n) for n in (6, 4, 3, 2)]
    rows = chat_rows(ex, block_size=8, packing="pack")  # rows of 9 tokens: [6+3], [4+2]
    assert [len(ids) for ids, _ in rows] == [9, 6]
    with pytest.raises(ValueError, match="packing"):
        chat_rows(ex, 8, "zip")


def test_restart_discards_an_interrupted_attempt(tmp_path):
    from types import SimpleNamespace

    (tmp_path / "ckpt" / "step_5").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    ft.restart(SimpleNamespace(resumed=False, dir=tmp_path, instance="x"))
    assert (tmp_path / "metrics.jsonl").exists()
    ft.restart(SimpleNamespace(resumed=True, dir=tmp_path, instance="x"))
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "ckpt").exists()


def test_fit_applies_layer_lr_decay_to_each_depth():
    """Adam's first step moves every weight by about its group's lr (m / sqrt(v) = ±1), so after one
    constant-lr step the largest change per tensor is lr·decay^depth."""
    model = Decoder(
        ModelConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, tie_embeddings=False)
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm_fit(model, steps=1, layer_lr_decay=0.5, schedule="constant", grad_clip=0.0)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert moved["lm_head.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["blocks.1.attn.q_proj.weight"] == pytest.approx(1e-2 * 0.5, rel=1e-3)
    assert moved["blocks.0.mlp.up_proj.weight"] == pytest.approx(1e-2 * 0.25, rel=1e-3)
    assert moved["tok_emb.weight"] == pytest.approx(1e-2 * 0.125, rel=1e-3)


def test_warmup_ratio_sets_the_warmup_from_max_steps():
    from lmforge.config import ConfigError

    assert opts(max_steps=200, warmup_ratio=0.1, warmup_steps=50).warmup == 20  # the ratio wins
    assert opts(max_steps=200, warmup_steps=50).warmup == 50
    assert opts(max_steps=20, warmup_steps=50).warmup == 20
    assert opts(max_steps=3, warmup_ratio=0.01).warmup == 1  # a ratio > 0 always warms up
    records = []
    model = tiny()
    g = torch.Generator().manual_seed(1)
    data = torch.randint(3, V, (4, 9), generator=g)
    ft.fit(
        model,
        opts(max_steps=10, warmup_ratio=0.5, schedule="constant"),
        next_batch=lambda: ((data[:, :-1], data[:, 1:]), data[:, 1:].numel()),
        loss_sum=lambda b: token_loss(model(b[0]), b[1])[0],
        evaluate=lambda: {"val_loss": 1.0},
        monitor="val_loss",
        log_metrics=records.append,
    )
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[:6] == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3, 1e-2, 1e-2])  # 5 warmup steps to lr 1e-2
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="warmup_ratio"):
            opts(warmup_ratio=bad).validate()
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        opts(layer_lr_decay=1.2).validate()
