"""The step-cost benchmark: what one LongReD optimizer step costs (``python -m benchmarks.step_cost``).

``bench`` runs the targets and writes the JSON; see its docstring and ``benchmarks/README.md``.
"""
