"""Choose an ensemble on out-of-fold predictions and write the spec infer.py runs.

The command lives in strokekit/cli/ensemble.py; `pip install -e .` also installs it as `strokekit-ensemble`.
"""
from strokekit.cli.ensemble import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
