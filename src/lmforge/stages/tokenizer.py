"""Train a tokenizer on the clean training text, encode both splits into token shards, and compare kinds.

Output:

- ``tokenizer.json`` (the Hugging Face ``tokenizers`` format every tool loads), ``tokenizer_meta.json``
  (kind, vocabulary size, special tokens, format version, training sample) and ``tokenizer_config.json``
  (for ``transformers``, with the chat template). Special tokens: ``<|bos|>``, ``<|eos|>``, ``<|pad|>``
  (ids 0-2), then ``special_tokens`` (chat roles and encoder tokens by default), then ``[UNK]`` for
  the kinds that can produce unknown tokens. Byte-level BPE (the default) never does.
- ``tokens/{train,val}/``: ``uint16`` (or ``uint32``) ``.bin`` shards, document indexes and
  ``index.json`` recording tokens, documents and UTF-8 bytes per shard, so every later stage can report
  tokenizer-independent bits per byte.
- With ``compare: [bpe, wordpiece, unigram, word]``: each kind trained at the same vocabulary size on
  the first ``compare_train_bytes`` of training text and measured on the validation split
  (``lmforge.tokenizer.compare``), summarised in ``comparison.json`` and ``comparison.md`` and as
  flat ``compare_<kind>_<metric>`` metrics for the run report. These hold timings, and WordPiece and
  Unigram training in ``tokenizers`` is not bit-reproducible, so they differ between runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, at_least, opt
from lmforge.runstore import StageContext, read_manifest, run_config
from lmforge.tokenizer.train import DEFAULT_EXTRA_TOKENS, KINDS, TokenizerSpec

log = logging.getLogger(__name__)

STAGE = "tokenizer"
VERSION = 2

Kind = Literal["bpe", "wordpiece", "unigram", "word"]


@dataclass
class Config:
    """Options of ``lmforge tokenizer``."""

    data: str = opt("@data", "data stage directory (train/ and val/ parquet shards)", path=True)
    out: str = opt("", "output stage directory", path=True)
    kind: Kind = opt("bpe", "tokenizer kind: byte-level BPE, WordPiece, Unigram, or the word-level baseline")
    vocab_size: int = opt(4096, "vocabulary size including special tokens")
    min_frequency: int = opt(2, "minimum frequency of a merged pair (BPE, WordPiece) or a word (word)")
    special_tokens: list[str] = opt(
        list(DEFAULT_EXTRA_TOKENS),
        "special tokens after <|bos|>, <|eos|>, <|pad|> (chat roles, encoder tokens)",
    )
    pre_tokenizer: str = opt("", "pre-tokenizer split: '' (the kind's own), gpt2, gpt4, or a regex")
    train_max_bytes: int = opt(0, "train the tokenizer on at most this many bytes of text (0 = all)")
    workers: int = opt(2, "parallel encoders: tiktoken threads, or tokenizers processes", cache=False)
    encode_backend: Literal["auto", "tokenizers", "tiktoken"] = opt(
        "auto", "encoder for the shards: auto = tiktoken when installed and identical on a sample"
    )
    append_eos: bool = opt(
        False, "end each document with <|eos|> in the token shards (it always starts with <|bos|>)"
    )
    compare: list[Kind] = opt([], "kinds to train at the same vocab_size and compare on the val split")
    compare_train_bytes: int = opt(500_000, "training text per compared kind, in bytes (0 = all)")
    compare_eval_bytes: int = opt(1_000_000, "validation text the comparison measures on, in bytes (0 = all)")

    def spec(self, kind: str | None = None) -> TokenizerSpec:
        """The ``TokenizerSpec`` of this config (for ``kind`` instead of ``self.kind`` if given)."""
        return TokenizerSpec(
            kind=kind or self.kind,
            vocab_size=self.vocab_size,
            min_frequency=self.min_frequency,
            extra_special_tokens=tuple(self.special_tokens),
            pre_tokenizer=self.pre_tokenizer,
        )

    def validate(self) -> None:
        if not self.vocab_size <= 2**32 - 1:
            raise ConfigError("vocab_size", f"must fit in uint32, got {self.vocab_size}")
        for kind in dict.fromkeys([self.kind, *self.compare]):
            try:
                self.spec(kind).validate()
            except ValueError as exc:  # TokenizerSpec messages start with the field name
                field = str(exc).split()[0]
                key = {"extra_special_tokens": "special_tokens"}.get(field, field)
                where = f" (for compare kind {kind})" if kind != self.kind else ""
                raise ConfigError(key, str(exc).removeprefix(field + " ") + where) from None
        at_least(self, 0, "train_max_bytes", "compare_train_bytes", "compare_eval_bytes")
        at_least(self, 1, "workers")
        if len(set(self.compare)) != len(self.compare):
            raise ConfigError(
                "compare", f"lists a kind twice: {self.compare}; valid kinds: {', '.join(KINDS)}"
            )


INPUTS = ("data",)


def main(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Train and encode (or return the cached result); returns the stage manifest."""
    return run_config(
        STAGE,
        cfg,
        INPUTS,
        build,
        version=VERSION,
        force=force,
        volatile=("comparison.json", "comparison.md"),  # timings and a side-by-side: not used downstream
    )


def build(cfg: Config, ctx: StageContext) -> dict[str, float]:
    """Train the tokenizer, save it, write the token shards of both splits, and run the comparison."""
    from lmforge.data.shards import iter_shard_texts
    from lmforge.log import progress
    from lmforge.tokenizer.chat import save_hf_config
    from lmforge.tokenizer.shards import encode_to_shards
    from lmforge.tokenizer.train import TextSample, save_tokenizer, spec_meta, train_tokenizer

    data_dir = ctx.inputs["data"]
    t0 = time.perf_counter()
    sample = TextSample(iter_shard_texts(data_dir / "train"), cfg.train_max_bytes)
    tok = train_tokenizer(sample, cfg.spec())
    train_s = time.perf_counter() - t0
    tok_path = save_tokenizer(tok, ctx.dir, meta=spec_meta(cfg.spec(), sample))
    save_hf_config(tok, ctx.dir)
    log.info(
        "trained %s tokenizer (vocab %d) on %.1f MB in %.1fs",
        cfg.kind,
        tok.get_vocab_size(),
        sample.bytes / 1e6,
        train_s,
    )

    metrics: dict[str, float] = {
        "vocab_size": tok.get_vocab_size(),
        "train_time_s": train_s,
        "train_sample_bytes": sample.bytes,
    }
    upstream = (read_manifest(data_dir) or {}).get("metrics", {})
    for split in ("train", "val"):
        t0 = time.perf_counter()
        texts = progress(
            iter_shard_texts(data_dir / split),
            total=upstream.get(f"{split}_docs"),
            description=f"encoding {split}",
        )
        index = encode_to_shards(
            texts,
            tok_path,
            ctx.dir / "tokens" / split,
            workers=cfg.workers,
            backend=cfg.encode_backend,
            append_eos=cfg.append_eos,
        )
        dt = max(time.perf_counter() - t0, 1e-9)
        metrics[f"{split}_tokens"] = index["tokens"]
        metrics[f"{split}_bytes"] = index["bytes"]
        metrics[f"{split}_docs"] = index["docs"]
        log.info(
            "%s: %d docs → %d tokens (%.2f bytes/token) in %.1fs (%.0f tokens/s, %.2f MB/s)",
            split,
            index["docs"],
            index["tokens"],
            index["bytes"] / max(index["tokens"], 1),
            dt,
            index["tokens"] / dt,
            index["bytes"] / 1e6 / dt,
        )
        if split == "train":
            metrics["encode_mb_per_s"] = index["bytes"] / 1e6 / dt
            metrics["encode_tokens_per_s"] = index["tokens"] / dt
    metrics["bytes_per_token"] = metrics["train_bytes"] / max(metrics["train_tokens"], 1)
    if cfg.compare:
        metrics.update(compare_kinds(cfg, ctx.dir, data_dir, main=(tok, train_s, sample.bytes)))
    return metrics


def compare_kinds(
    cfg: Config, out: Path, data_dir: Path, *, main: tuple[Any, float, int]
) -> dict[str, float]:
    """Train every ``cfg.compare`` kind on the same sample, measure it on validation text, write the report.

    The stage's own tokenizer (``main``: tokenizer, training seconds, sample bytes) is reused for its
    kind when it was trained on the same sample.

    Returns:
        flat ``compare_<kind>_<metric>`` metrics.
    """
    from lmforge.data.shards import iter_shard_texts
    from lmforge.tokenizer.compare import comparison_table, evaluate_tokenizer
    from lmforge.tokenizer.train import TextSample, train_tokenizer

    held_out = list(TextSample(iter_shard_texts(data_dir / "val"), cfg.compare_eval_bytes))
    held_out = [t for t in held_out if t] or list(islice(iter_shard_texts(data_dir / "train"), 100))
    results: dict[str, dict[str, float]] = {}
    sample_bytes = 0
    for kind in cfg.compare:
        spec = cfg.spec(kind)
        if kind == cfg.kind and cfg.compare_train_bytes == cfg.train_max_bytes:
            tok, train_s, sample_bytes = main
        else:
            t0 = time.perf_counter()
            sample = TextSample(iter_shard_texts(data_dir / "train"), cfg.compare_train_bytes)
            tok = train_tokenizer(sample, spec)
            train_s = time.perf_counter() - t0
            sample_bytes = sample.bytes
        results[kind] = {**evaluate_tokenizer(tok, held_out), "train_time_s": train_s}
    report = {
        "vocab_size": cfg.vocab_size,
        "train_sample_bytes": sample_bytes,
        "eval_docs": len(held_out),
        "eval_bytes": sum(len(t.encode("utf-8")) for t in held_out),
        "kinds": results,
    }
    (out / "comparison.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    table = comparison_table(results)
    (out / "comparison.md").write_text(
        f"Tokenizers at vocab_size {cfg.vocab_size}, trained on {sample_bytes / 1e6:.2f} MB, "
        f"measured on {report['eval_bytes'] / 1e6:.2f} MB of validation text.\n\n{table}\n",
        encoding="utf-8",
    )
    log.info("tokenizer comparison (held-out text):\n%s", table)
    return {f"compare_{kind}_{name}": value for kind, m in results.items() for name, value in m.items()}
