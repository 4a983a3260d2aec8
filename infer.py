"""Run an ensemble spec on the released test images and write a validated TEKNOFEST submission.

The command lives in strokekit/cli/infer.py; `pip install -e .` also installs it as `strokekit-infer`.
"""
from strokekit.cli.infer import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
