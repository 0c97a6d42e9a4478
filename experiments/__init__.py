"""Experiments of longred_pl: studies that train and evaluate, with their committed results.

Run from the repository root as modules, e.g. ``python -m experiments.reproduce``.
"""
