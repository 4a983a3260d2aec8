"""Search hyper-parameters (config keys) with Optuna; every trial is a normal run, the best becomes a config.

The command lives in strokekit/cli/tune.py; `pip install -e .` also installs it as `strokekit-tune`.
"""
from strokekit.cli.tune import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
