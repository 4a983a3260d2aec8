"""Bridge to nnU-Net v2: export the training set with the kit's folds, or turn nnU-Net predictions into a submission.

The command lives in strokekit/cli/export_nnunet.py; `pip install -e .` also installs it as `strokekit-export-nnunet`.
"""
from strokekit.cli.export_nnunet import entry_point, main

__all__ = ["main"]  # tests and users call main(argv)

if __name__ == "__main__":
    entry_point()
