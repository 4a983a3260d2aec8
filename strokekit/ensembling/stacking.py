"""Stacking: a level-2 model on the OOF outputs of several level-1 models, the `stack` blend of ensemble.py.

Features per image: each classifier member's probability (`p:<run>`) and, per segmenter run, the predicted
area share of each lesion class (pixels whose argmax is the class, over all pixels) and its peak probability
(`area_ischemic:<run>`, `peak_hemorrhagic:<run>` ...), computed on the seg probabilities at the run's OOF
resolution (`seg_features`; at inference the image's probabilities are resized to it first). Level-2 models:
logistic regression on standardised features (C from a grid) and small gradient-boosted trees (scikit-learn).

Nested cross-validation on OOF: the outer folds are the kit's folds; for outer fold k a model is chosen by an
inner leave-one-fold-out CV over the other folds only, fitted on them, and predicts fold k, so every stacked
OOF probability comes from a model that never saw its row (`nested_stack`). The model kept for inference
is chosen by the same inner CV over all folds and fitted on all rows. Fitted models are stored as plain
numbers (coefficients; each tree's nodes), never pickled, and applied by `apply_model` both to the OOF rows
and at inference (inference/predict.py), so the two cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from strokekit.errors import SettingError
from strokekit.postprocess.steps import resize_probs
from strokekit.vocabulary import CLASS_NAMES, LESION_CLASSES

STACK = "stack"
MODEL_KINDS = ("logistic", "gbm", "constant")
# what the inner CV chooses among: the logistic regression's regulariser C, or a small tree ensemble
CANDIDATES: dict[str, dict] = {
    "logistic_C0.01": {"kind": "logistic", "C": 0.01},
    "logistic_C0.1": {"kind": "logistic", "C": 0.1},
    "logistic_C1": {"kind": "logistic", "C": 1.0},
    "logistic_C10": {"kind": "logistic", "C": 10.0},
    "gbm_d2_n50": {"kind": "gbm", "max_depth": 2, "n_estimators": 50, "learning_rate": 0.1},
    "gbm_d3_n50": {"kind": "gbm", "max_depth": 3, "n_estimators": 50, "learning_rate": 0.05},
}
SEG_FEATURES = tuple(f"{what}_{CLASS_NAMES[c]}" for what in ("area", "peak") for c in LESION_CLASSES)


# --------------------------------------------------------------------------- features


def seg_features(probs: np.ndarray, size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Area share and peak probability of each lesion class of (3, H, W) or (N, 3, H, W) probabilities,
    after resizing them to `size` (the seg run's OOF resolution; None: as they are)."""
    probs = np.asarray(probs, dtype=np.float32)
    if size is not None and tuple(probs.shape[-2:]) != ((size, size) if np.isscalar(size) else tuple(size)):
        probs = resize_probs(probs, size)
    single = probs.ndim == 3
    probs = probs[None] if single else probs
    labels = probs.argmax(axis=1)
    out = {}
    for c in LESION_CLASSES:
        out[f"area_{CLASS_NAMES[c]}"] = (labels == c).mean(axis=(1, 2)).astype(np.float64)
        out[f"peak_{CLASS_NAMES[c]}"] = probs[:, c].max(axis=(1, 2)).astype(np.float64)
    return {k: out[k][0] if single else out[k] for k in SEG_FEATURES}  # named; in SEG_FEATURES order


def feature_matrix(features: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    """(N, F) float64 in the order of `names`; a missing feature is a SettingError naming it."""
    missing = [n for n in names if n not in features]
    if missing:
        raise SettingError(f"stack: features {missing} are missing (the spec's level-2 model needs {names})")
    return np.column_stack([np.asarray(features[n], dtype=np.float64) for n in names])


# --------------------------------------------------------------------------- level-2 models as plain data


def fit_model(candidate: dict, x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Fit a candidate on (x, y) and return it as plain numbers (see apply_model)."""
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:  # a training set of one class: its share is all there is to learn
        return {"kind": "constant", "p": float(y.mean()) if len(y) else 0.5}
    if candidate["kind"] == "logistic":
        from sklearn.linear_model import LogisticRegression

        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        lr = LogisticRegression(C=candidate["C"], max_iter=1000).fit((x - mean) / scale, y)
        return {"kind": "logistic", "C": float(candidate["C"]), "mean": mean.tolist(), "scale": scale.tolist(),
                "coef": lr.coef_[0].astype(float).tolist(), "intercept": float(lr.intercept_[0])}
    if candidate["kind"] == "gbm":
        from sklearn.ensemble import GradientBoostingClassifier

        params = {k: candidate[k] for k in ("max_depth", "n_estimators", "learning_rate")}
        gbm = GradientBoostingClassifier(random_state=seed, **params).fit(x, y)
        prior = float(gbm.init_.class_prior_[1])
        trees = []
        for est in gbm.estimators_[:, 0]:
            t = est.tree_
            trees.append({"feature": t.feature.astype(int).tolist(), "threshold": t.threshold.astype(float).tolist(),
                          "left": t.children_left.astype(int).tolist(), "right": t.children_right.astype(int).tolist(),
                          "value": t.value[:, 0, 0].astype(float).tolist()})
        return {"kind": "gbm", **{k: params[k] for k in params}, "init": float(np.log(prior / (1 - prior))),
                "trees": trees}
    raise SettingError(f"unknown level-2 model kind {candidate['kind']!r}; valid: {list(MODEL_KINDS)}")


def _tree_values(tree: dict, x32: np.ndarray) -> np.ndarray:
    feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"], dtype=np.float64)
    left, right, value = np.asarray(tree["left"]), np.asarray(tree["right"]), np.asarray(tree["value"])
    node = np.zeros(len(x32), dtype=int)
    for _ in range(len(left)):
        inner = left[node] != -1
        if not inner.any():
            break
        at = node[inner]
        go_left = x32[np.flatnonzero(inner), feature[at]] <= threshold[at]
        node[inner] = np.where(go_left, left[at], right[at])
    return value[node]


def apply_model(model: dict, x: np.ndarray) -> np.ndarray:
    """P(positive) of a stored level-2 model for each row of x (N, F): the one function OOF and inference use."""
    x = np.asarray(x, dtype=np.float64)
    kind = model.get("kind")
    if kind == "constant":
        return np.full(len(x), float(model["p"]))
    if kind == "logistic":
        z = ((x - np.asarray(model["mean"])) / np.asarray(model["scale"])) @ np.asarray(model["coef"])
        return 1.0 / (1.0 + np.exp(-(z + model["intercept"])))
    if kind == "gbm":
        x32 = x.astype(np.float32).astype(np.float64)  # the trees split float32 features, as scikit-learn fits them
        raw = np.full(len(x), float(model["init"]))
        for tree in model["trees"]:
            raw += model["learning_rate"] * _tree_values(tree, x32)
        return 1.0 / (1.0 + np.exp(-raw))
    raise SettingError(f"unknown level-2 model kind {kind!r}; valid: {list(MODEL_KINDS)}")


# --------------------------------------------------------------------------- nested cross-validation


def inner_splits(y: np.ndarray, folds: np.ndarray, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs over the given rows: leave one of their folds out; with a single
    fold among them, a stratified 3-fold split."""
    groups = np.unique(folds)
    if len(groups) >= 2:
        return [(np.flatnonzero(folds != g), np.flatnonzero(folds == g)) for g in groups]
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(np.asarray(y, dtype=int), minlength=2).min())
    if smallest < 2:  # too few of a class to validate on: the inner CV cannot choose (the first candidate is kept)
        return []
    return list(StratifiedKFold(min(3, smallest), shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def pick_candidate(x: np.ndarray, y: np.ndarray, folds: np.ndarray, score_fn: Callable, candidates=None,
                   seed: int = 0) -> tuple[str, dict[str, float]]:
    """The candidate with the best mean inner-CV score over these rows (ties: the first), and every score."""
    candidates = CANDIDATES if candidates is None else candidates
    splits = inner_splits(y, folds, seed)
    scores = {}
    for name, candidate in candidates.items():
        values = []
        for train, valid in splits:
            p = apply_model(fit_model(candidate, x[train], y[train], seed), x[valid])
            value = float(score_fn(y[valid], p)) if len(np.unique(y[valid])) == 2 else np.nan
            values.append(value)
        finite = [v for v in values if np.isfinite(v)]
        scores[name] = float(np.mean(finite)) if finite else float("nan")
    ranked = [n for n in candidates if np.isfinite(scores[n])]
    best = max(ranked, key=lambda n: scores[n]) if ranked else next(iter(candidates))
    return best, scores


def candidates_of(kinds) -> dict[str, dict]:
    """The CANDIDATES of the given model kinds ("logistic", "gbm"); SettingError for an unknown kind."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in kinds if k not in MODEL_KINDS[:2]]
    if unknown or not kinds:
        raise SettingError(f"stack models {unknown or kinds}: choose among {list(MODEL_KINDS[:2])}")
    return {name: c for name, c in CANDIDATES.items() if c["kind"] in kinds}


def nested_stack(x: np.ndarray, y: np.ndarray, folds: np.ndarray, score_fn: Callable, candidates=None,
                 seed: int = 0) -> dict:
    """Nested CV: {oof (N,) level-2 probabilities, each from a model fitted without its outer fold's rows;
    per_fold {fold: chosen, inner scores, training rows}; model (fitted on all rows, chosen by inner CV over
    all folds), chosen, inner_scores}. The small fits run single-threaded (threads only cost here)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _nested_stack(x, y, folds, score_fn, CANDIDATES if candidates is None else candidates, seed)


def _nested_stack(x, y, folds, score_fn, candidates, seed) -> dict:
    x, y, folds = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=int), np.asarray(folds, dtype=int)
    outer = np.unique(folds)
    if len(outer) < 2:
        raise SettingError(f"stack: nested CV needs OOF of at least 2 folds; the OOF holds fold(s) {outer.tolist()}")
    oof, per_fold = np.full(len(y), np.nan), {}
    for k in outer:
        held, train = folds == k, folds != k
        chosen, inner = pick_candidate(x[train], y[train], folds[train], score_fn, candidates, seed)
        model = fit_model(candidates[chosen], x[train], y[train], seed)
        oof[held] = apply_model(model, x[held])
        per_fold[int(k)] = {"chosen": chosen, "inner_scores": inner, "train_rows": np.flatnonzero(train)}
    chosen, inner = pick_candidate(x, y, folds, score_fn, candidates, seed)
    return {"oof": oof, "per_fold": per_fold, "chosen": chosen, "inner_scores": inner,
            "model": fit_model(candidates[chosen], x, y, seed)}


def stack_probs(stack: dict, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """A spec's `stack` block applied to a features mapping (name -> (N,) values)."""
    return apply_model(stack["model"], feature_matrix(features, list(stack["features"])))
