"""Train one fold, or every fold, of a stroke / type / seg model; write checkpoints and out-of-fold predictions.

The command lives in strokekit/cli/train.py; `pip install -e .` also installs it as `strokekit-train`.
"""
from strokekit.cli.train import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
