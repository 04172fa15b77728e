"""Text data for lmforge: one ``Document`` type, sources, cleaning and parquet shards.

Modules: ``document`` (the ``Document`` record), ``sources`` (resolve and stream named builtin
corpora and files), ``readers`` (one reader per file format), ``builtin`` (corpora every CPython
carries), ``clean`` (normalisation and exact deduplication as composable steps), ``shards``
(train/val split and parquet shard writing/reading).
"""
