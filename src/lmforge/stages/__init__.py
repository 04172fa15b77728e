"""Stage programs: one module per CLI subcommand, each with a typed ``Config``, an ``INPUTS`` tuple
naming the config fields that point at upstream stages, and ``main(config) -> manifest``.

Stages never import each other; what two stages share lives in the library below them.
"""
