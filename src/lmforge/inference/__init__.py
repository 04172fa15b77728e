"""Inference: next-token sampling and the batched generation engine (prefill + cached decode, streaming,
optional exact speculative decoding)."""

from lmforge.inference.engine import Engine
from lmforge.inference.rows import Completion, DecodeStats, Event, SamplingParams
from lmforge.inference.sampling import check_sampling_args, sample

__all__ = [
    "Completion",
    "DecodeStats",
    "Engine",
    "Event",
    "SamplingParams",
    "check_sampling_args",
    "sample",
]
