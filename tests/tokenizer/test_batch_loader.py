"""Tests for lmforge.tokenizer.loader: window contents, exact resume, per-rank streams, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import InputError
from lmforge.tokenizer.loader import BatchLoader
from lmforge.tokenizer.shards import encode_to_shards, open_tokens


@pytest.fixture(scope="module")
def tokens_dir(tok_path, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens") / "train"
    encode_to_shards(corpus[:200], tok_path, out, workers=1, tokens_per_shard=500)  # several shards
    return out


def test_batches_are_shifted_windows_of_the_stream(tokens_dir):
    flat = open_tokens(tokens_dir).tolist()
    text = "," + ",".join(map(str, flat)) + ","
    loader = BatchLoader(tokens_dir, batch_size=4, block_size=16, seed=0)
    for _ in range(5):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            assert "," + ",".join(map(str, row_x + row_y[-1:])) + "," in text  # a contiguous window


def test_resume_from_state_dict_gives_identical_batches(tokens_dir):
    straight = BatchLoader(tokens_dir, batch_size=3, block_size=8, seed=7)
    expected = [straight.next_batch() for _ in range(6)]

    first = BatchLoader(tokens_dir, batch_size=3, block_size=8, seed=7)
    for _ in range(2):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON types only
    assert state["batches"] == 2
    resumed = BatchLoader(tokens_dir, batch_size=3, block_size=8, seed=7)
    resumed.load_state_dict(state)
    for x_exp, y_exp in expected[2:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_exp) and torch.equal(y, y_exp)
    assert resumed.batches == 6


def test_ranks_and_seeds_draw_different_windows(tokens_dir):
    def first_batch(seed: int, rank: int) -> torch.Tensor:
        return BatchLoader(tokens_dir, 4, 16, seed=seed, rank=rank, world_size=2).next_batch()[0]

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(0, 1))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))
    state = BatchLoader(tokens_dir, 4, 16, seed=0, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="rank 0"):
        BatchLoader(tokens_dir, 4, 16, seed=0, rank=1, world_size=2).load_state_dict(state)


def test_stream_shorter_than_a_window_is_rejected(tok_path, tmp_path):
    encode_to_shards(["hi"], tok_path, tmp_path / "tiny", workers=1)
    n = len(open_tokens(tmp_path / "tiny"))
    BatchLoader(tmp_path / "tiny", 1, n - 1, seed=0).next_batch()  # exactly block_size + 1 tokens
    with pytest.raises(InputError, match=f"holds {n} tokens"):
        BatchLoader(tmp_path / "tiny", 1, n, seed=0)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(tmp_path / "tiny", 1, 1, seed=0, rank=2, world_size=2)


def test_random_packing_keeps_its_state_format(tokens_dir):
    state = BatchLoader(tokens_dir, 2, 8, seed=0).state_dict()
    assert set(state) == {"format", "batches", "rank", "n_tokens", "bit_generator", "state", "inc"} | {
        "has_uint32",
        "uinteger",
    }
    assert state["format"] == 1


def test_bos_aligned_windows_start_at_documents_and_resume_exactly(tokens_dir):
    flat = open_tokens(tokens_dir)
    loader = BatchLoader(tokens_dir, batch_size=4, block_size=32, seed=3, packing="bos_aligned")
    seen_starts = set()
    for _ in range(10):
        x, y = loader.next_batch()
        assert (x[:, 0] == 0).all(), "every window starts with <|bos|>"
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in x.tolist():
            seen_starts.add(tuple(row[:4]))
            assert any(flat[s : s + 32].tolist() == row for s in loader.starts.tolist())
    assert len(seen_starts) > 5  # different documents, not one

    straight = BatchLoader(tokens_dir, 3, 16, seed=5, packing="bos_aligned")
    expected = [straight.next_batch() for _ in range(5)]
    first = BatchLoader(tokens_dir, 3, 16, seed=5, packing="bos_aligned")
    first.next_batch()
    first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["packing"] == "bos_aligned"
    resumed = BatchLoader(tokens_dir, 3, 16, seed=5, packing="bos_aligned")
    resumed.load_state_dict(state)
    for x_exp, y_exp in expected[2:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_exp) and torch.equal(y, y_exp)
    with pytest.raises(ValueError, match="packing"):
        BatchLoader(tokens_dir, 3, 16, seed=5).load_state_dict(state)


def test_bos_aligned_uses_only_starts_a_whole_window_fits_after(tok_path, tmp_path):
    encode_to_shards(["a b c d e f g h", "x"], tok_path, tmp_path / "one", workers=1)
    n = len(open_tokens(tmp_path / "one"))  # the second document starts at n - 2
    loader = BatchLoader(tmp_path / "one", 4, n - 3, seed=0, packing="bos_aligned")
    assert loader.starts.tolist() == [0]
    assert BatchLoader(tmp_path / "one", 4, 1, seed=0, packing="bos_aligned").starts.tolist() == [0, n - 2]
    with pytest.raises(ValueError, match="packing must be one of"):
        BatchLoader(tmp_path / "one", 1, 2, seed=0, packing="docs")


def test_shuffled_takes_each_disjoint_window_once_per_epoch(tokens_dir):
    flat = open_tokens(tokens_dir).tolist()
    T = 16
    loader = BatchLoader(tokens_dir, batch_size=5, block_size=T, seed=2, packing="shuffled")
    per_epoch = (len(flat) - T - 1) // T + 1  # starts o, o+T, ... with a whole window of T+1 after
    rows: list[tuple[int, list[int]]] = []  # (epoch, row)
    while loader.epoch < 3 or loader.taken < len(loader._order):
        x, y = loader.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows.extend((loader.epoch, r + y[i, -1:].tolist()) for i, r in enumerate(x.tolist()))
        if loader.epoch == 3 and loader.taken == len(loader._order):
            break
    # the batch that crosses an epoch's end is labelled with the new epoch: recount by position instead
    where = {}  # window (T+1 tokens) -> its first start in the stream
    for s in range(len(flat) - T):
        where.setdefault(tuple(flat[s : s + T + 1]), s)
    starts = [where[tuple(r)] for _, r in rows]
    epochs, i = [], 0
    for _ in range(3):
        n = len(range(starts[i] % T, len(flat) - T, T))
        epochs.append(starts[i : i + n])
        i += n
    for ep in epochs:
        offset = ep[0] % T
        assert sorted(ep) == list(range(offset, len(flat) - T, T)), "each window of the epoch exactly once"
        assert abs(len(ep) - per_epoch) <= 1
    assert len({tuple(e[:5]) for e in epochs}) == 3, "a new order every epoch"


def test_shuffled_resumes_exactly_mid_epoch_and_across_epochs(tokens_dir):
    args = dict(batch_size=7, block_size=16, seed=4, packing="shuffled")
    straight = BatchLoader(tokens_dir, **args)
    n_epoch = len(range(0, len(straight.stream) - 16, 16))
    total = 3 * n_epoch // 7 + 2  # into the fourth epoch
    expected = [straight.next_batch() for _ in range(total)]
    for stop in (0, 1, n_epoch // 7, n_epoch // 7 + 1, total - 1):
        first = BatchLoader(tokens_dir, **args)
        for _ in range(stop):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))  # plain JSON types only
        resumed = BatchLoader(tokens_dir, **args)
        resumed.load_state_dict(state)
        for x_exp, y_exp in expected[stop:]:
            x, y = resumed.next_batch()
            assert torch.equal(x, x_exp) and torch.equal(y, y_exp), f"resumed after {stop} batches"
    with pytest.raises(ValueError, match="packing"):
        BatchLoader(tokens_dir, 7, 16, seed=4).load_state_dict(state)
