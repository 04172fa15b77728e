"""Tokenizer for lmforge: train/save/load ``tokenizer.json``, the chat template, token shards, the loader.

Modules: ``train`` (byte-level BPE, WordPiece, Unigram and word-level kinds; special tokens;
metadata; bytes per token), ``chat`` (conversation → ids + loss mask), ``compare`` (held-out
metrics of a tokenizer), ``encoders`` (``tokenizers`` or tiktoken document encoding), ``shards``
(documents → ``shard_NNNNN.bin`` + ``.idx`` + ``index.json``, memory-mapped reading), ``loader``
(resumable random or BOS-aligned windows for training; imports torch), ``texts`` (plain texts framed
and padded for classification and embeddings; imports torch).
"""
