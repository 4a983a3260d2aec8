"""Score or check a TEKNOFEST-2021 stroke submission.

The command lives in strokekit/cli/score.py; `pip install -e .` also installs it as `strokekit-score`.
"""
from strokekit.cli.score import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
