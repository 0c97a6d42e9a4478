"""Benchmarks of longred_pl: each writes JSON (every raw figure, the machine, the settings).

Run from the repository root as modules, e.g. ``python -m benchmarks.step_cost --smoke``.
Speed and memory are shown by these JSON files, never by timed assertions in tests.
``common`` holds the set-up they share; each benchmark is one module or one subpackage.
"""
