"""Ensembling on OOF predictions: selection, thresholds, the post-processing search, the seg classifier
and the spec files (no torch)."""
