"""Ensembling on OOF predictions: selection, thresholds, the post-processing search, seg classifier, spec files (no torch)."""
