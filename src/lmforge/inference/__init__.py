"""Inference: next-token sampling (temperature, top-k, top-p) and autoregressive generation."""

from lmforge.inference.generate import generate, stream
from lmforge.inference.sampling import check_sampling_args, sample_next

__all__ = ["check_sampling_args", "generate", "sample_next", "stream"]
