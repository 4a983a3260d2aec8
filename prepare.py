"""Fill the preprocessing cache ahead of training: every training image decoded, windowed and resized once.

The command lives in strokekit/cli/prepare.py; `pip install -e .` also installs it as `strokekit-prepare`.
"""
from strokekit.cli.prepare import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
