"""stroke / type / seg: the only place the tasks differ.

A task says which index rows it trains and validates on, the target of each row, the head size, the default
loss and selection metric, how logits become probabilities, the validation metrics, and the OOF file:
- stroke: every training image; target 1 = a stroke folder (ischemic or hemorrhagic); OOF prob = P(stroke).
- type:   stroke images only; target 1 = the hemorrhagic folder; OOF prob = P(hemorrhagic).
- seg:    stroke images with a MASK or OVERLAY, plus a seeded `seg_negatives` share of the no-stroke images
          (training only; `seg_val_negatives: true` also validates the fold's no-stroke images, whose
          false-positive rate is reported while the Dice/IoU stay on lesion slices); with `pseudo: <folder>`
          (pseudo.py) the pseudo-labelled test images join every fold's training rows, never a validation set.
With `select_postprocess` (a post-processing spec), seg validation also draws each image's phase-2 mask
(decide.phase2_class_map: postprocess.py's steps and the never-empty fill, as infer.py does) at the mask's
own resolution and logs `pp_`-prefixed strict scores of it, plus `pp_official_{iou,dice}` (the organisers'
tolerant counting, official.py, mean over lesion slices); best.pt is then picked by
pp_dice_macro_imagewise_lesion_mean unless `metric` names another.
Classifiers with `aux_seg` > 0 also load their training slices' masks, for the lesion head's loss
(losses.LesionAuxLoss). Classifier OOF: oof.csv with image_id, fold, target, prob. Seg OOF: oof.npz with
image_id (N,) int64, probs (N, 3, S, S) float16 softmax at `oof_size`, fold (N,) int64, orig_hw (N, 2) int64.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from strokekit.training import distributed

from strokekit.evaluation import metrics, official
from strokekit.atomic import write_atomic
from strokekit.data.dataset import BalancedSampler, LesionBatchSampler, SliceDataset
from strokekit.data.pseudo import PseudoLabelError, pseudo_rows
from strokekit.data.neighbours import attach_neighbours, neighbour_count
from strokekit.models.sigmoid_head import map_activation
from strokekit.training.losses import DeepSupervisionLoss, LesionAuxLoss, build_loss
from strokekit.vocabulary import TASK_OUTPUTS

CLASSIFIER_METRICS = ("auc", "recall", "precision", "f1", "specificity", "balanced_accuracy", "accuracy")


class Task:
    name = "?"
    num_outputs = TASK_OUTPUTS["stroke"]
    loss_mode = "binary"
    default_loss = "ce"
    default_metric = "auc"
    samplers: tuple[str, ...] = ()  # config `sampler` names besides none (config/schema.py SAMPLERS lists them too)

    def rows(self, index: pd.DataFrame, cfg: dict, train: bool) -> pd.DataFrame:
        raise NotImplementedError

    def split(self, index: pd.DataFrame, folds: pd.DataFrame, fold: int, cfg: dict):
        """(train rows, validation rows) of one fold, each with a `fold` column (and with `neighbours`, each
        slice's neighbouring slices looked up in the whole index: data/neighbours.py)."""
        table = index.merge(folds[["image_id", "fold"]], on="image_id", how="inner", validate="1:1")
        train = self.rows(table[table["fold"] != fold], cfg, train=True)
        val = self.rows(table[table["fold"] == fold], cfg, train=False)
        if train.empty or val.empty:
            raise ValueError(f"task {self.name}, fold {fold}: {len(train)} training and {len(val)} validation "
                             "images; every fold needs both")
        if cfg.get("pseudo"):  # pseudo-labelled test images: training rows of every fold, never validated
            train = self.with_pseudo(train, index, cfg)
        if neighbour_count(cfg):
            train, val = (attach_neighbours(rows, neighbour_count(cfg), pool=index) for rows in (train, val))
        return train.reset_index(drop=True), val.reset_index(drop=True)

    def with_pseudo(self, train: pd.DataFrame, index: pd.DataFrame, cfg: dict) -> pd.DataFrame:
        """The training rows plus the kept images of the `pseudo` folder (data/pseudo.py) with fold -1, so no
        fold validates them and no OOF file holds them; refused for classifiers (pseudo-labels are masks)."""
        if self.name != "seg":
            raise PseudoLabelError(f"pseudo: pseudo-labels are masks; a {self.name} config cannot train on them")
        rows = pseudo_rows(cfg["pseudo"], index).assign(fold=-1)
        if cfg.get("seg_lesion_type"):
            rows = rows[rows[f"has_{cfg['seg_lesion_type']}"] == 1]
        out = pd.concat([train, rows], ignore_index=True)
        out["ignore"] = out["ignore"].fillna("")
        return out

    def metric_mode(self, metric: str) -> str:
        return "min" if metric.endswith("loss") else "max"

    def build_loss(self, cfg: dict, class_weights=None) -> torch.nn.Module:
        return build_loss(cfg["loss"] or self.default_loss, self.loss_mode, class_weights)

    def loss_target(self, batch: dict, device: torch.device):
        """What the training loss compares the model's output with."""
        return batch["mask" if "mask" in batch else "target"].to(device, non_blocking=True)


class ClassifierTask(Task):
    positive = "?"
    samplers = ("balanced",)

    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def dataset(self, rows, cfg, train: bool) -> SliceDataset:
        """With aux_seg, training items carry their masks too (for the lesion head)."""
        return SliceDataset(rows, cfg, train, targets=self.targets(rows), masks=train and cfg["aux_seg"] > 0)

    def build_loss(self, cfg: dict, class_weights=None) -> torch.nn.Module:
        if cfg["aux_seg"] < 0:
            raise ValueError(f"aux_seg is a loss weight: 0 (off) or more, not {cfg['aux_seg']}")
        loss = super().build_loss(cfg, class_weights)
        return LesionAuxLoss(loss, cfg["aux_seg"]) if cfg["aux_seg"] else loss

    def loss_target(self, batch: dict, device: torch.device):
        """The label; with aux_seg, (label, mask)."""
        label = batch["target"].to(device, non_blocking=True)
        return (label, batch["mask"].to(device, non_blocking=True)) if "mask" in batch else label

    def sampler(self, dataset: SliceDataset, cfg: dict) -> dict:
        """DataLoader keyword for the configured sampler (`balanced`, or None for shuffling)."""
        if cfg["sampler"] in (None, "none"):
            return {}
        if cfg["sampler"] == "balanced":
            steps = cfg.get("epoch_steps")
            return {"sampler": BalancedSampler(dataset.targets, seed=cfg["seed"], **shard(cfg),
                                               num_samples=steps * cfg["batch_size"] if steps else None)}
        raise ValueError(f"sampler {cfg['sampler']!r} does not fit task {self.name}; use balanced or none")

    def class_counts(self, dataset: SliceDataset) -> np.ndarray:
        return np.bincount(dataset.targets, minlength=2)

    def probabilities(self, logits: torch.Tensor, cfg: dict | None = None) -> torch.Tensor:
        return logits.float().softmax(dim=1)[:, 1]

    def new_state(self, cfg: dict, keep_oof: bool = False) -> dict:
        return {"ids": [], "target": [], "prob": []}

    def accumulate(self, state: dict, batch: dict, probs: torch.Tensor) -> None:
        state["ids"].append(batch["image_id"].numpy())
        state["target"].append(batch["target"].numpy())
        state["prob"].append(probs.cpu().numpy())

    def finish(self, state: dict) -> dict[str, float]:
        y, p = np.concatenate(state["target"]), np.concatenate(state["prob"])
        at_half = metrics.classification_metrics(y, p, threshold=0.5)
        best = metrics.tune_threshold(y, p, objective="f1")
        out = {"auc": metrics.roc_auc(y, p)}
        out.update({f"{k}_at_05": float(at_half[k]) for k in CLASSIFIER_METRICS if k != "auc"})
        out["threshold_best_f1"] = float(best["threshold"])
        out.update({f"{k}_at_best": float(best[k]) for k in CLASSIFIER_METRICS if k != "auc"})
        return out

    def write_oof(self, state: dict, fold: int, out_dir) -> str:
        table = pd.DataFrame({"image_id": np.concatenate(state["ids"]).astype(np.int64), "fold": fold,
                              "target": np.concatenate(state["target"]).astype(np.int64),
                              "prob": np.concatenate(state["prob"]).astype(np.float64)})
        path = out_dir / "oof.csv"
        write_atomic(path, lambda f: table.to_csv(f, index=False), text=True)
        return str(path)


class StrokeTask(ClassifierTask):
    name, positive = "stroke", "stroke"

    def rows(self, index, cfg, train):
        return index[index["split"] == "train"]

    def targets(self, rows):
        return (rows["class_name"] != "no_stroke").to_numpy(dtype=np.int64)


class TypeTask(ClassifierTask):
    name, positive = "type", "hemorrhagic"

    def rows(self, index, cfg, train):
        return index[(index["split"] == "train") & index["class_name"].isin(["ischemic", "hemorrhagic"])]

    def targets(self, rows):
        return (rows["class_name"] == "hemorrhagic").to_numpy(dtype=np.int64)


class SegTask(Task):
    name = "seg"
    num_outputs = TASK_OUTPUTS["seg"]
    loss_mode = "multiclass"
    default_loss = "dice+ce"
    default_metric = "dice_macro_imagewise_lesion_mean"
    samplers = ("lesion",)

    def rows(self, index, cfg, train):
        pool = index[index["split"] == "train"]
        stroke = pool[pool["class_name"] != "no_stroke"]
        labelled = stroke[(stroke["mask"] != "") | (stroke["overlay"] != "")]
        negatives = pool[pool["class_name"] == "no_stroke"]
        if train and cfg["seg_lesion_type"]:  # a type-specific segmenter learns from its type's slices only
            labelled = labelled[labelled[f"has_{cfg['seg_lesion_type']}"] == 1]
        if train:
            negatives = negatives.sample(frac=cfg["seg_negatives"], random_state=cfg["seed"])
        elif not cfg["seg_val_negatives"]:
            negatives = negatives.iloc[:0]
        return pd.concat([labelled, negatives]).sort_values("image_id")

    def dataset(self, rows, cfg, train: bool) -> SliceDataset:
        return SliceDataset(rows, cfg, train, masks=True, full_masks=not train)

    def build_loss(self, cfg: dict, class_weights=None) -> torch.nn.Module:
        """The config's loss; with `seg_head: sigmoid` in multilabel mode (each lesion channel its own sigmoid)."""
        if cfg.get("seg_head") == "sigmoid":
            loss = build_loss(cfg["loss"], "multilabel", class_weights)
        else:
            loss = super().build_loss(cfg, class_weights)
        return DeepSupervisionLoss(loss) if cfg.get("deep_supervision") else loss

    def sampler(self, dataset: SliceDataset, cfg: dict) -> dict:
        if cfg["sampler"] in (None, "none"):
            return {}
        if cfg["sampler"] == "lesion":
            rows = pd.DataFrame(dataset.rows)
            has_lesion = (rows["has_ischemic"] == 1) | (rows["has_hemorrhagic"] == 1)
            return {"batch_sampler": LesionBatchSampler(has_lesion, cfg["batch_size"], cfg["lesion_share"],
                                                        seed=cfg["seed"], **shard(cfg, batch=False),
                                                        rest=cfg.get("lesion_rest", "clear"),
                                                        num_batches=cfg.get("epoch_steps"))}
        raise ValueError(f"sampler {cfg['sampler']!r} does not fit task seg; use lesion or none")

    def class_counts(self, dataset: SliceDataset) -> np.ndarray:
        raise ValueError("class_weights: balanced is for the classifiers; give seg three weights, e.g. [1, 5, 5]")

    def probabilities(self, logits: torch.Tensor, cfg: dict | None = None) -> torch.Tensor:
        """The maps the OOF file keeps: softmax, or a sigmoid head's two sigmoids (models/sigmoid_head.py)."""
        activation = map_activation(cfg or {})
        return logits.float().softmax(dim=1) if activation == "softmax" else activation(logits)

    def new_state(self, cfg: dict, keep_oof: bool = False) -> dict:
        pp = cfg.get("select_postprocess")
        if pp is not None:
            from strokekit.config.postprocess import normalise_spec
            pp = normalise_spec(pp)
        return {"ids": [], "stats": [], "any": [], "lesion": [], "probs": [] if keep_oof else None,
                "hw": [], "oof_size": cfg["oof_size"], "pp": pp, "pp_stats": [], "pp_any": [], "pp_official": [],
                "groups": None}  # image_id -> patient (predict_loader): the patientwise scores

    def accumulate(self, state: dict, batch: dict, probs: torch.Tensor) -> None:
        """Per-image counts at each mask's own resolution (probabilities upsampled before the argmax)."""
        for j, full in enumerate(batch["mask_full"]):
            up = F.interpolate(probs[j:j + 1], size=full.shape, mode="bilinear", align_corners=False)
            pred = up.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
            state["stats"].append(metrics.seg_stats(pred, full))
            state["any"].append(metrics.seg_stats(pred > 0, full > 0, n_classes=2))
            state["lesion"].append(bool((full > 0).any()))
            state["hw"].append(full.shape)
            if state["pp"] is not None:
                self._accumulate_postprocessed(state, up[0].cpu().numpy(), np.asarray(full))
        state["ids"].append(batch["image_id"].numpy())
        if state["probs"] is not None:
            size = state["oof_size"]
            small = probs if probs.shape[-1] == size else F.interpolate(
                probs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            state["probs"].append(small.cpu().numpy().astype(np.float16))

    @staticmethod
    def _accumulate_postprocessed(state: dict, probs: np.ndarray, full: np.ndarray) -> None:
        """The phase-2 mask infer.py would draw from these probabilities, scored strictly and officially."""
        from strokekit.postprocess.decide import phase2_class_map
        class_map, _ = phase2_class_map(probs, state["pp"])
        state["pp_stats"].append(metrics.seg_stats(class_map, full))
        state["pp_any"].append(metrics.seg_stats(class_map > 0, full > 0, n_classes=2))
        state["pp_official"].append(tuple(official.tolerant_counts(class_map, full)))

    def finish(self, state: dict) -> dict[str, float]:
        lesion = np.asarray(state["lesion"], dtype=bool)
        groups = None
        if state.get("groups") is not None:
            groups = np.asarray([state["groups"][int(i)] for i in np.concatenate(state["ids"])], dtype=object)
        out = seg_metrics(state["stats"], state["any"], lesion, groups)
        if state["pp"] is not None:
            out.update({f"pp_{k}": v for k, v in
                        seg_metrics(state["pp_stats"], state["pp_any"], lesion, groups).items()})
            counts = np.asarray(state["pp_official"], dtype=np.int64).reshape(-1, 4)[lesion]
            scores = official.tolerant_scores(*counts.T)
            out.update({f"pp_official_{k}": float(np.mean(scores[k])) if len(counts) else float("nan")
                        for k in ("iou", "dice")})
        return out

    def write_oof(self, state: dict, fold: int, out_dir) -> str:
        ids = np.concatenate(state["ids"]).astype(np.int64)
        arrays = {"image_id": ids, "probs": np.concatenate(state["probs"]),
                  "fold": np.full(len(ids), fold, dtype=np.int64),
                  "orig_hw": np.asarray(state["hw"], dtype=np.int64).reshape(-1, 2)}
        path = out_dir / "oof.npz"
        write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
        return str(path)


def seg_metrics(stats: list, any_stats: list, lesion: np.ndarray,
                groups: np.ndarray | None = None) -> dict[str, float]:
    """Strict per-class and any-lesion scores over the lesion slices, and the share of clean slices
    (when validated) with a predicted lesion. `patientwise`: each patient's lesion slices pooled (its volume
    IoU / Dice), then the mean over patients (`groups`: each image's patient; without, every image its own)."""
    per_class = metrics.SegStats(*(np.concatenate([s[k] for s in stats])[lesion] for k in range(4)))
    out = metrics.seg_scores(per_class)
    anyl = metrics.SegStats(*(np.concatenate([s[k] for s in any_stats])[lesion] for k in range(4)))
    mine = np.arange(len(lesion))[lesion] if groups is None else np.asarray(groups)[lesion]
    patients = metrics.pooled_by_group(per_class, mine)
    for name, fn in (("iou", metrics.iou_score), ("dice", metrics.dice_score)):
        for reduction in ("micro", "macro-imagewise"):
            out[f"{name}_{reduction.replace('-', '_')}_any_lesion"] = float(fn(*anyl, reduction=reduction)[1])
        by_patient = fn(*patients, reduction="macro-imagewise")
        out.update({f"{name}_patientwise_{cls}": float(by_patient[c]) for c, cls in ((1, "ischemic"),
                                                                                       (2, "hemorrhagic"))})
        out[f"{name}_patientwise_lesion_mean"] = metrics.lesion_mean(by_patient, (1, 2))
        out[f"{name}_patientwise_any_lesion"] = float(
            fn(*metrics.pooled_by_group(anyl, mine), reduction="macro-imagewise")[1])
    if (~lesion).any():  # negatives validated: how often a lesion is predicted on a clean slice
        pred_pixels = np.concatenate([s[0] + s[1] for s in any_stats])[~lesion, 1]
        out["negatives_with_lesion_pred"] = float((pred_pixels > 0).mean())
    return out


def shard(cfg: dict, batch: bool = True) -> dict:
    """Sampler keywords for this process's share under torchrun; none (the one-process sampler) without."""
    if distributed.world() == 1:
        return {}
    share = {"rank": distributed.rank(), "world": distributed.world()}
    return {**share, "batch_size": cfg["batch_size"]} if batch else share


TASKS: dict[str, Task] = {"stroke": StrokeTask(), "type": TypeTask(), "seg": SegTask()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def selection_metric(cfg: dict) -> tuple[str, str]:
    """(metric name, 'max' | 'min') that picks best.pt and drives early stopping."""
    task = get_task(cfg["task"])
    default = task.default_metric
    if task.name == "seg" and cfg.get("select_postprocess") is not None:
        default = f"pp_{default}"
    name = cfg["metric"] or default
    return name, task.metric_mode(name)
