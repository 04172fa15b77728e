"""Inference: next-token sampling, the batched generation engine (prefill + cached decode, streaming,
optional exact speculative decoding), and single-prompt generation for any next-token model."""

from lmforge.inference.engine import Completion, DecodeStats, Engine, Event, SamplingParams
from lmforge.inference.generate import generate, stream
from lmforge.inference.sampling import check_sampling_args, sample_next

__all__ = [
    "Completion",
    "DecodeStats",
    "Engine",
    "Event",
    "SamplingParams",
    "check_sampling_args",
    "generate",
    "sample_next",
    "stream",
]
