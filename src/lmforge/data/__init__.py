"""Text data for lmforge: one ``Document`` type, sources, curation steps, deduplication and shards.

Modules: ``document`` (the ``Document`` record), ``sources`` (resolve and stream named builtin corpora
and files), ``readers`` (one reader per file format), ``builtin`` (corpora every CPython carries),
``normalize`` (NFC, control characters, whitespace, mojibake), ``quality`` (Gopher/C4/FineWeb rules),
``langid`` (offline language identification), ``pii`` (typed placeholders for personal data),
``audit`` (representation counts and blocklist), ``decontam`` (n-gram overlap with evaluation sets),
``clean`` (the step protocol and per-step statistics), ``dedup`` (exact and MinHash+LSH near
duplicates), ``pipeline`` (the three passes of the data stage), ``executor`` (local processes or
Ray), ``shards`` (train/val split and parquet shards).
"""
