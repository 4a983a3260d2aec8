"""Write the phantom data set: synthetic head-CT slices in the TEKNOFEST-2021 layout, for the demo and tests.

The command lives in strokekit/cli/make_phantom.py; `pip install -e .` also installs it as `strokekit-make-phantom`.
"""
from strokekit.cli.make_phantom import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
