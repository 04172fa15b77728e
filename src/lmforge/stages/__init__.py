"""Stage programs: one module per CLI subcommand, each with a typed ``Config``, an ``INPUTS`` tuple
naming the config fields that point at upstream stages, and ``main(config) -> manifest``.

Stages never import each other; what two stages share lives in the library below them, or, for the
methods of one group, in a module of the group that is not a stage (``finetune/sft_loop.py``, SFT's
loop for ``sft``, ``lora`` and ``task``). Most ``main`` functions are one ``runstore.run_config`` call.
"""
