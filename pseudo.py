"""Pseudo-label the phase-2 test images with a seg ensemble, for a second round of training.

The command lives in strokekit/cli/pseudo.py; `pip install -e .` also installs it as `strokekit-pseudo`.
"""
from strokekit.cli.pseudo import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
