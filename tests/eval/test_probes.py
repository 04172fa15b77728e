"""Probes: the bias probe measures gaps between terms; the memorisation probe separates a memorised
stream from an unseen one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.eval.probes import bias_probe, memorisation_probe
from lmforge.eval.tasks import LM
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder


class FavoursWoman:
    def loglikelihood(self, pairs):
        return [(-1.0 if "woman" in ctx else -3.0, False) for ctx, _ in pairs]


def test_bias_probe_reports_gaps_and_the_worst_example() -> None:
    axes = {"gender": (("man", "woman"), ("The {term} is a",)), "other": (("x", "y"), ("{term} is",))}
    r = bias_probe(FavoursWoman(), axes, attributes=("nurse", "pilot"))
    m = r["metrics"]
    assert m["bias_gender_mean_gap"] == 2.0 and m["bias_other_mean_gap"] == 0.0
    assert m["bias_gender_woman_mean_ll"] == -1.0 and m["bias_gender_man_mean_ll"] == -3.0
    w = r["worst"]
    assert w["most_likely"] == "woman" and w["axis"] == "gender" and w["template"] == "The {term} is a"


def test_memorisation_probe_separates_train_from_unseen() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = rng.integers(1, 32, 40)
    model = Decoder(ModelConfig(vocab_size=32, block_size=24, n_layer=1, n_head=2, n_embd=48))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    x = torch.tensor(np.stack([train[s : s + 24] for s in range(17)]).astype(np.int64))  # every window
    for _ in range(120):  # memorise the stream
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    lm = LM(model, tok=None, bos_id=0, batch_size=4)
    r = memorisation_probe(lm, {"train": train, "val": rng.integers(1, 32, 40)}, n=6, prefix=16, suffix=8)
    assert r["memo_train_exact"] == 1.0 and r["memo_train_prefix_acc"] == 1.0
    assert r["memo_val_exact"] == 0.0 and r["memo_val_prefix_acc"] < 0.5
    with pytest.raises(ValueError, match="block_size"):
        memorisation_probe(lm, {"train": train}, prefix=20, suffix=8)
