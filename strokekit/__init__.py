"""strokekit: a submission kit for the TEKNOFEST-2021 stroke CT challenge (phase 1 labels, phase 2 masks)."""
__version__ = "0.1.0"
