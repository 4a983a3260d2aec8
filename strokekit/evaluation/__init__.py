"""Evaluation: strict metrics, the organisers' counting, bootstrap intervals and scoring (numpy only: no
torch, no plots)."""
