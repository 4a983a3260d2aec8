"""Rank every config's out-of-fold figures per task, with the chosen ensembles beside them.

The command lives in strokekit/cli/leaderboard.py; `pip install -e .` also installs it as `strokekit-leaderboard`.
"""
from strokekit.cli.leaderboard import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
