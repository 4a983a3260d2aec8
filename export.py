"""Export ensemble specs to a self-contained model folder that runs anywhere (no runs/, no pickle).

The command lives in strokekit/cli/export.py; `pip install -e .` also installs it as `strokekit-export`.
"""
from strokekit.cli.export import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
