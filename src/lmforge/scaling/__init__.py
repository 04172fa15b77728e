"""Scaling laws at any scale: train a grid of small decoders, fit power laws, predict larger ones.

- ``points``: one grid point (model size × token budget) and its training recipe; each point is trained
  through the run store (``scaling.point`` stage directories), so points are cached and a sweep resumes.
- ``laws``: the fits (Kaplan L(N), L(D); Chinchilla L(N, D) with Huber loss in log space), bootstrap
  intervals and the compute-optimal allocation.
- ``plots``: loss against compute with the frontier and fitted curves, isoFLOP curves.
"""
