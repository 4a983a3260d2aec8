"""strokekit: a submission kit for the TEKNOFEST-2021 stroke CT challenge (phase 1 labels, phase 2 masks).

`from strokekit import Predictor` gives the Python predict API (strokekit/inference/predictor.py); it is imported on
first use, so `import strokekit` stays light (no torch) for the scripts that do not run models.
"""
__version__ = "0.1.0"
__all__ = ["Predictor", "Prediction", "__version__"]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from strokekit.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'strokekit' has no attribute {name!r}")
