"""Models by name (timm / smp / own / published systems), offline weights, checkpoints and flip TTA."""
