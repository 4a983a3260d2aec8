"""Write the folds CSV every later stage reads.

The command lives in strokekit/cli/kfold.py; `pip install -e .` also installs it as `strokekit-kfold`.
"""
from strokekit.cli.kfold import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
