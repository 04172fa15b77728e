"""Tokenizer for lmforge: train/save/load ``tokenizer.json``, token shards, and the batch loader.

Modules: ``train`` (byte-level BPE, special tokens, bytes per token), ``shards`` (documents →
``shard_NNNNN.bin`` + ``index.json`` and memory-mapped reading), ``loader`` (resumable random
windows for training; imports torch).
"""
