"""``python -m benchmarks.step_cost [--smoke] [flags]`` (from the repository root)."""

from benchmarks.step_cost.bench import main

main()
