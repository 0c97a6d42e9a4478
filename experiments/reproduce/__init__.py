"""The reproduction study: Long+CPT, Mix+CPT, LongReD-C and LongReD-U on the embedded default.

``study`` trains and evaluates every method over several seeds (``python -m
experiments.reproduce``), ``report`` turns its JSON into the table and the plot, ``ablate``
reruns LongReD-C with other distillation weights; ``results/`` holds the committed outputs.
"""
