"""Train a byte-level BPE tokenizer on the clean training text and encode both splits into token shards.

Output: ``tokenizer.json`` (the Hugging Face ``tokenizers`` format every tool loads; special tokens
``<|bos|>``, ``<|eos|>``, ``<|pad|>``), and ``tokens/{train,val}/`` with ``uint16`` (or ``uint32``)
``.bin`` shards plus ``index.json`` recording tokens, documents and UTF-8 bytes per shard, so every
later stage can report bits per byte. Byte-level BPE never produces an unknown token.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import ConfigError, opt
from lmforge.runstore import StageContext, read_manifest, run_stage

log = logging.getLogger(__name__)

STAGE = "tokenizer"
VERSION = 1


@dataclass
class Config:
    """Options of ``lmforge tokenizer``."""

    data: str = opt("@data", "data stage directory (train/ and val/ parquet shards)", path=True)
    out: str = opt("", "output stage directory", path=True)
    kind: Literal["bpe"] = opt("bpe", "tokenizer kind (byte-level BPE; more kinds: issue 4)")
    vocab_size: int = opt(4096, "vocabulary size including special tokens")
    min_frequency: int = opt(2, "minimum pair frequency for a BPE merge")
    train_max_bytes: int = opt(0, "train the tokenizer on at most this many bytes of text (0 = all)")
    workers: int = opt(2, "processes for encoding")

    def validate(self) -> None:
        if not 256 + 3 <= self.vocab_size <= 2**32 - 1:
            raise ConfigError(
                "vocab_size", f"must be >= 259 (256 bytes + 3 special tokens), got {self.vocab_size}"
            )
        if self.min_frequency < 1:
            raise ConfigError("min_frequency", f"must be >= 1, got {self.min_frequency}")
        if self.train_max_bytes < 0:
            raise ConfigError("train_max_bytes", f"must be >= 0, got {self.train_max_bytes}")
        if self.workers < 1:
            raise ConfigError("workers", f"must be >= 1, got {self.workers}")


INPUTS = ("data",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train and encode (or return the cached result); returns the stage manifest."""
    if not cfg.out:
        raise ConfigError("out", "an output directory is required (e.g. --out runs/x/tokenizer)")
    return run_stage(
        STAGE, cfg, out=cfg.out, inputs={"data": cfg.data}, work=build, version=VERSION, force=force
    )


def build(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Train the tokenizer, save it, and write the token shards of both splits."""
    from lmforge.data.shards import iter_shard_texts
    from lmforge.log import progress
    from lmforge.tokenizer.shards import encode_to_shards
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    data_dir = ctx.inputs["data"]

    def training_texts():
        budget = cfg.train_max_bytes
        used = 0
        for text in iter_shard_texts(data_dir / "train"):
            yield text
            used += len(text.encode("utf-8"))
            if budget and used >= budget:
                return

    t0 = time.perf_counter()
    tok = train_bpe(training_texts(), vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    train_s = time.perf_counter() - t0
    tok_path = ctx.dir / "tokenizer.json"
    save_tokenizer(tok, tok_path)
    log.info("trained byte-level BPE (vocab %d) in %.1fs", tok.get_vocab_size(), train_s)

    metrics: dict[str, float] = {"vocab_size": tok.get_vocab_size(), "train_time_s": train_s}
    upstream = (read_manifest(data_dir) or {}).get("metrics", {})
    for split in ("train", "val"):
        t0 = time.perf_counter()
        texts = progress(
            iter_shard_texts(data_dir / split),
            total=upstream.get(f"{split}_docs"),
            description=f"encoding {split}",
        )
        index = encode_to_shards(texts, tok_path, ctx.dir / "tokens" / split, workers=cfg.workers)
        dt = time.perf_counter() - t0
        metrics[f"{split}_tokens"] = index["tokens"]
        metrics[f"{split}_bytes"] = index["bytes"]
        metrics[f"{split}_docs"] = index["docs"]
        log.info(
            "%s: %d docs → %d tokens (%.2f bytes/token) in %.1fs (%.2f MB/s)",
            split,
            index["docs"],
            index["tokens"],
            index["bytes"] / max(index["tokens"], 1),
            dt,
            index["bytes"] / 1e6 / max(dt, 1e-9),
        )
        if split == "train":
            metrics["encode_mb_per_s"] = index["bytes"] / 1e6 / max(dt, 1e-9)
    metrics["bytes_per_token"] = metrics["train_bytes"] / max(metrics["train_tokens"], 1)
    return metrics
