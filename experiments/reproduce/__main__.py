"""``python -m experiments.reproduce [--budget MIN] [flags]`` (from the repository root)."""

from experiments.reproduce.study import main

main()
