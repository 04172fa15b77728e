"""Language-model evaluation: loss, perplexity and bits per byte on a token stream, and the unigram baseline."""

from lmforge.eval.lm import evaluate_lm, unigram_entropy

__all__ = ["evaluate_lm", "unigram_entropy"]
