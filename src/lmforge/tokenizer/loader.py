"""Random training windows over a token directory, resumable exactly.

Each batch takes ``batch_size`` windows of ``block_size + 1`` tokens at uniformly random start
positions of the concatenated stream (windows may cross document and shard boundaries; documents are
separated by ``<|bos|>``). Positions come from a numpy PCG64 generator seeded by ``(seed, rank)``, so
ranks draw different windows. The loader's whole state is that generator's state and a batch counter;
``state_dict`` saves it as plain ints and strings, and a loader restored with ``load_state_dict``
produces exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from lmforge.errors import InputError
from lmforge.tokenizer.shards import TokenStream

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


class BatchLoader:
    """Draw ``(x, y)`` batches of random windows from ``tokens_dir``.

    Args:
        tokens_dir: a directory written by ``encode_to_shards``.
        batch_size: windows per batch (B).
        block_size: tokens per window fed to the model (T).
        seed: base seed; the generator is seeded by ``(seed, rank)``.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of ranks (each draws its own windows).

    Raises:
        InputError: the directory is not a valid token directory, or holds fewer than
            ``block_size + 1`` tokens.
        ValueError: a size or rank is out of range.
    """

    def __init__(
        self,
        tokens_dir: str | os.PathLike,
        batch_size: int,
        block_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size}, {block_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.stream = TokenStream(tokens_dir)
        if len(self.stream) < block_size + 1:
            raise InputError(
                f"{tokens_dir}: holds {len(self.stream)} tokens; block_size={block_size} needs at least "
                f"{block_size + 1} (use more data or a smaller block_size)"
            )
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank])))
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)``, int64 tensors of shape [B, T] with ``y[:, t] == x[:, t + 1]`` in the stream."""
        span = self.block_size + 1
        starts = self.rng.integers(0, len(self.stream) - self.block_size, size=self.batch_size)
        windows = np.stack([self.stream.read(int(s), int(s) + span) for s in starts]).astype(
            np.int64
        )  # [B, T+1]
        self.batches += 1
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # [B, T]
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # [B, T]
        return x, y

    def state_dict(self) -> dict:
        """The loader's position: plain ints and strings only (safe for JSON and ``weights_only`` loads)."""
        state = self.rng.bit_generator.state
        return {
            "format": STATE_FORMAT,
            "batches": self.batches,
            "rank": self.rank,
            "n_tokens": len(self.stream),
            "bit_generator": state["bit_generator"],
            "state": str(state["state"]["state"]),  # 128-bit ints as decimal strings
            "inc": str(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict`` saved by the loader of the same rank.

        Raises:
            ValueError: the state is of another format, rank or generator.
        """
        if state.get("format") != STATE_FORMAT or state.get("bit_generator") != "PCG64":
            raise ValueError(
                f"loader state has format {state.get('format')!r}/{state.get('bit_generator')!r}; expected {STATE_FORMAT}/PCG64"
            )
        if state["rank"] != self.rank:
            raise ValueError(f"loader state belongs to rank {state['rank']}, this loader is rank {self.rank}")
        if state["n_tokens"] != len(self.stream):
            logger.warning(
                "token stream changed since the loader state was saved (%d → %d tokens); batches will differ",
                state["n_tokens"],
                len(self.stream),
            )
        self.rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }
        self.batches = int(state["batches"])
