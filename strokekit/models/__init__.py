"""Models by name (timm / smp / own / published systems), offline weights, checkpoints and flip TTA."""
# The published systems' own models register themselves in the registry; importing any module of this
# package runs this line first, so every model name is known wherever a model is built.
from strokekit.models import kit_unet, recipes  # noqa: F401
