"""Inference: batched TTA prediction, the one spec -> decisions pipeline, submissions, model folders, manifests, Predictor."""
