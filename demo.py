"""The whole competition loop on the built-in phantom data set, on CPU, in a few minutes.

The command lives in strokekit/cli/demo.py; `pip install -e .` also installs it as `strokekit-demo`.
"""
from strokekit.cli.demo import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
