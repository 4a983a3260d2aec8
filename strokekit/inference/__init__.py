"""Inference: batched TTA prediction, the one pipeline from specs to per-image decisions, submissions,
model folders, manifests and the Predictor API."""
