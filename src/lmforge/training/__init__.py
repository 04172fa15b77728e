"""Training building blocks shared by every loop: optimiser and schedules (``optim``), the token-weighted
loss and accumulation rule (``step``), and checkpoints with RNG state (``checkpoint``).

The loops themselves live in the stage programs; this package holds the math that must not drift.
"""
