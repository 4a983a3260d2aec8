"""Write one static HTML report (figures embedded, opens with no server) for runs or ensembles.

The command lives in strokekit/cli/report.py; `pip install -e .` also installs it as `strokekit-report`.
"""
from strokekit.cli.report import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
