"""Post-processing: the per-image steps on class probabilities and the phase-1 / phase-2 decisions
(numpy / scipy only)."""
