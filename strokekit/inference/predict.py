"""The one inference path: an ensemble spec's checkpoints -> per-image probabilities, batched, with TTA.

Each checkpoint is loaded once. Images are read and preprocessed once per distinct preprocessing
(image source, windows, channels, size, mean/std) as each member's own config says, in batches; the next
batch is read, resized, normalised and stacked (numpy: no torch intra-op threads there) on a thread while
the current one runs. Every flip of a batch goes through a model in one forward pass per TTA scale (tta.py:
the spec's `tta` flips x `tta_scales` scales, both overridable); the models
run channels_last (faster convolutions on CUDA and on CPU alike: ~1.4x on 2 CPU cores), under bf16/fp16
autocast on CUDA; everything runs under torch.inference_mode. A member (one config) averages its fold
checkpoints; members are blended with ensemble_spec.combine. Segmentation probabilities are upsampled to
each image's own size before blending.

A spec is an ensemble spec YAML or one role of a model folder (modelfolder.py: safetensors weights, the
configs in model.json); both load into the same Members. Rows are index rows (files: `png` / `dicom`) or,
for in-memory input (strokekit.Predictor), rows carrying `hu`, a 2-D array in Hounsfield units: DICOM
members window it with their config's windows, as they window a DICOM; PNG members see it through the
brain window the slice PNGs were exported with (the row's `png_window`, Predictor's default
readers.BRAIN_WINDOW; a DICOM file given for a PNG member too), or refuse it (`png_window=None`).
Members trained with `neighbours` (2.5D, data/neighbours.py) read each image with its neighbouring slices,
looked up among the rows given together (once per call, before batching); an `hu` array has no series, so
they refuse it.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from strokekit.data.dataset import preprocess
from strokekit.data.badinput import BadInputError
from strokekit.data.dicom import read_dicom_hu, window, windows_to_channels
from strokekit.data.index import ORDER_COLUMNS
from strokekit.data.neighbours import NeighbourError, attach_neighbours, neighbour_count, stack_slices
from strokekit.data.equalize import equalize_channels
from strokekit.data.readers import load_image
from strokekit.ensembling.spec import SpecError, combine, member_thresholds, member_weights, read_spec
from strokekit.ensembling.stacking import SEG_FEATURES, STACK, seg_features, stack_probs
from strokekit.errors import SettingError
from strokekit.models.precision import autocast
from strokekit.models.registry import load_checkpoint
from strokekit.models.sigmoid_head import map_activation
from strokekit.progress import bar
from strokekit.models.tta import forward_passes, predict_with_tta, resolve_flips, resolve_scales

PREPROCESS_KEYS = ("image_source", "windows", "in_chans", "img_size", "mean", "std", "neighbours", "equalize")
# Images per forward pass on the CPU: bigger passes thrash the caches. resnet18 @224 / Unet-r34 @256 on 2
# cores, channels_last: 112 / 19 images/s at 4, 117 / 20 at 8, 96 / 17 at 16, 75 / 16 at 64.
CPU_FORWARD_IMAGES = 8
ORDER_KEYS = ("series_uid", *ORDER_COLUMNS)  # an index row's slice order (else read from its DICOM header)


def resolve_device(name: str | None = None) -> torch.device:
    """'cuda' | 'cpu' | None (= CUDA when available)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def default_batch_size(device: torch.device, n_flips: int) -> int:
    """Images per batch when not given: 16 on CUDA; on CPU, CPU_FORWARD_IMAGES per pass, flips included."""
    return 16 if device.type == "cuda" else max(1, CPU_FORWARD_IMAGES // n_flips)


def preprocess_key(cfg: dict) -> tuple:
    """Members whose configs share this key read and preprocess an image identically."""
    optional = {"neighbours": 0, "equalize": None}  # keys older checkpoints' configs lack
    return tuple(repr(cfg.get(k, optional[k]) if k in optional else cfg[k]) for k in PREPROCESS_KEYS)


@dataclass
class Member:
    """One config of the ensemble: its fold models (averaged) and the preprocessing they share."""
    name: str
    cfg: dict
    models: list
    checkpoints: list[str]
    configs: list[dict]  # each checkpoint's config as resolved (cfg is the first's)


def load_member(entry: dict, task: str, device: torch.device) -> Member:
    """Load a spec member's checkpoints (each once); their preprocessing and task must agree.

    A model-folder member lists `checkpoint_models` (config, num_outputs) beside its safetensors paths.
    """
    from strokekit.inference.modelfolder import load_weights

    models, cfg, configs = [], None, []
    exported = entry.get("checkpoint_models")
    for k, path in enumerate(entry["checkpoint_paths"]):
        if exported is not None:
            ckpt_cfg = exported[k]["config"]
            model = load_weights(path, ckpt_cfg, exported[k]["num_outputs"], device)
        else:
            model, ckpt_cfg = load_checkpoint(path, device)
        if ckpt_cfg["task"] != task:
            raise SpecError(f"{path}: a {ckpt_cfg['task']} checkpoint in a {task} ensemble")
        if cfg is not None and preprocess_key(ckpt_cfg) != preprocess_key(cfg):
            raise SpecError(f"member {entry['name']}: {path} preprocesses images differently from "
                            f"{entry['checkpoint_paths'][0]} ({', '.join(PREPROCESS_KEYS)}); make them two members")
        if ckpt_cfg.get("channels_last", True):
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        configs.append(ckpt_cfg)
        cfg = cfg or ckpt_cfg
    return Member(entry["name"], cfg, models, list(entry["checkpoint_paths"]), configs)


def open_spec(source: dict | str, role: str | None = None, allow_outside: bool = False) -> dict:
    """A spec dict from a dict, an ensemble spec YAML, or a model folder (its `role` ensemble)."""
    if isinstance(source, dict):
        return source
    from strokekit.inference.modelfolder import is_model_folder, read_model_folder

    if not is_model_folder(source):
        return read_spec(source, allow_outside)
    ensembles = read_model_folder(source)
    if role is None and len(ensembles) == 1:
        return next(iter(ensembles.values()))
    if role not in ensembles:
        raise SpecError(f"model folder {source} holds the ensembles {sorted(ensembles)}, not {role!r}"
                        + ("" if role else "; name the one to use"))
    return ensembles[role]


def read_input(row: dict, cfg: dict) -> np.ndarray:
    """One row's model input as HxWxC uint8: from its files (load_image), or from an in-memory HU array; with
    the config's `neighbours`, the neighbouring slices' channels too (an HU array is refused)."""
    if neighbour_count(cfg):
        if row.get("hu") is not None:
            raise NeighbourError(f"{row.get('source', 'array')}: this model reads neighbouring slices (neighbours: "
                                 f"{neighbour_count(cfg)}), which a single HU array does not have; give the "
                                 "series' DICOM files (paths or index rows) together")
        return stack_slices(row, cfg, _read_slice)
    return _read_slice(row, cfg)


def _read_slice(row: dict, cfg: dict) -> np.ndarray:
    hu = row.get("hu")
    if hu is None and cfg["image_source"] == "png" and not row.get("png") and row.get("dicom") \
            and row.get("png_window") is not None:
        hu = read_dicom_hu(row["dicom"])  # a DICOM for a PNG member: seen the way the PNGs were exported
    if hu is None:
        return load_image(row, cfg)
    if cfg["image_source"] == "dicom":
        image = windows_to_channels(hu, cfg["windows"])
    elif row.get("png_window") is not None:
        image = window(hu, *row["png_window"])[..., None]
    else:
        raise BadInputError(row.get("source", "array"), "an HU array for a member trained on PNG slices, and "
                            "png_window=None: give the PNG, or a png_window (the PNG export's HU window)")
    image = equalize_channels(image, cfg.get("equalize"))  # as load_image does
    if image.shape[-1] != cfg["in_chans"]:
        image = np.repeat(image[..., :1], cfg["in_chans"], axis=-1)
    return np.ascontiguousarray(image)


def member_probs(member: Member, batch: torch.Tensor, flips, spatial: bool, amp: str | None,
                 scales=(1.0,)) -> torch.Tensor:
    """Mean over the member's fold models of TTA-averaged softmax (a sigmoid seg head: its sigmoids,
    models/sigmoid_head.py): (B,) P(positive) or (B, 3, h, w)."""
    device = batch.device
    if member.cfg.get("channels_last", True):
        batch = batch.contiguous(memory_format=torch.channels_last)
    total = None
    for model in member.models:
        with autocast(device, amp):
            probs = predict_with_tta(model, batch, flips, spatial=spatial,
                                     activation=map_activation(member.cfg) if spatial else "softmax",
                                     scales=scales).float()
        total = probs if total is None else total + probs
    mean = total / len(member.models)
    return mean if spatial else mean[:, 1]


def upsample(probs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """(B, 3, h, w) -> one (3, H, W) float32 array per image at its own size (bilinear, half-pixel)."""
    out = []
    for j, size in enumerate(sizes):
        p = probs[j:j + 1]
        if tuple(p.shape[-2:]) != tuple(size):
            p = F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False)
        out.append(p[0].cpu().numpy().astype(np.float32))
    return out


class EnsemblePredictor:
    """A loaded ensemble spec. `predict_classifier(rows)` / `iter_seg(rows)` give blended probabilities."""
    progress = False  # True: a bar over the images predicted, on a terminal (infer.py; strokekit/progress.py)

    def __init__(self, spec: dict | str, device: str | None = None, flips=None, batch_size: int | None = None,
                 amp: str | None = None, workers: int = 2, allow_outside: bool = False, role: str | None = None,
                 scales=None):
        self.spec = open_spec(spec, role, allow_outside)
        self.task = self.spec["task"]
        self.device = resolve_device(device)
        self.flips = resolve_flips(flips if flips is not None else self.spec.get("tta"))
        self.scales = resolve_scales(scales if scales is not None else self.spec.get("tta_scales"))
        batch_size = default_batch_size(self.device, len(self.flips)) if batch_size is None else batch_size
        if batch_size < 1:
            raise SettingError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size, self.amp, self.workers = batch_size, amp, max(1, workers)
        self.members = [load_member(m, self.task, self.device) for m in self.spec["members"]]
        self.weights, self.thresholds = member_weights(self.spec), member_thresholds(self.spec)
        self.stack_seg = self._stack_segmenters()

    def _stack_segmenters(self):
        """The seg runs whose features a `stack` blend reads (stacking.py), as a seg EnsemblePredictor; None
        for other blends and for stacks of classifiers alone."""
        seg = (self.spec.get("stack") or {}).get("seg_members") if self.spec["blend"] == STACK else None
        if not seg:
            return None
        return EnsemblePredictor({"task": "seg", "blend": "mean", "members": seg, "path": self.spec.get("path")},
                                 device=str(self.device), flips=self.flips, scales=self.scales,
                                 batch_size=self.batch_size, amp=self.amp, workers=self.workers)

    @property
    def n_checkpoints(self) -> int:
        return sum(len(m.models) for m in self.members) + (self.stack_seg.n_checkpoints if self.stack_seg else 0)

    def cost(self, n_images: int) -> dict:
        """Forward passes this run will make (one per batch, checkpoint and scale: flips share a pass)."""
        return forward_passes(n_images, self.batch_size, self.flips, self.n_checkpoints, self.scales)

    def _amp(self, member: Member) -> str | None:
        return self.amp if self.amp is not None else member.cfg.get("amp")

    def _read(self, rows: list[dict]) -> dict:
        """A chunk's (B, C, S, S) input batch per preprocessing key, and each image's own (H, W)."""
        batches, sizes = {}, None
        for member in self.members:
            key = preprocess_key(member.cfg)
            if key not in batches:
                images = [read_input(row, member.cfg) for row in rows]
                sizes = sizes or [im.shape[:2] for im in images]
                batch = torch.from_numpy(np.stack([preprocess(im, member.cfg).numpy() for im in images]))
                batches[key] = batch.pin_memory() if self.device.type == "cuda" else batch
        return {"batches": batches, "sizes": sizes}

    def _chunks(self, rows: pd.DataFrame | list[dict]) -> Iterator[tuple[list[dict], dict]]:
        """(rows, read images) per batch; batch k+1 is read on a thread while batch k runs."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        k = max(neighbour_count(member.cfg) for member in self.members)
        if k and records and len(records[0].get("neighbours") or ()) < 2 * k + 1:  # looked up among all rows given
            keys = [key for key in ("image_id", "png", "dicom", *ORDER_KEYS) if key in records[0]]
            table = pd.DataFrame.from_records([{key: r.get(key) for key in keys} for r in records])
            table = attach_neighbours(table, k)
            records = [{**r, "neighbours": n, "neighbour_fallbacks": f}
                       for r, n, f in zip(records, table["neighbours"], table["neighbour_fallbacks"])]
        chunks = [records[i:i + self.batch_size] for i in range(0, len(records), self.batch_size)]
        shown = bar(total=len(records), desc=f"predict ({self.task})", unit="image", show=self.progress)
        with ThreadPoolExecutor(max_workers=1) as pool, shown:
            pending = pool.submit(self._read, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                read = pending.result()
                pending = pool.submit(self._read, chunks[k + 1]) if k + 1 < len(chunks) else None
                yield chunk, read
                shown.update(len(chunk))

    @torch.inference_mode()
    def iter_member_probs(self, rows: pd.DataFrame | list[dict]) -> Iterator[tuple[list[int], list, list]]:
        """Per batch: image ids, each member's probabilities, and the images' sizes.

        Classifiers: a (B,) float64 array per member; seg: a list of (3, H, W) float32 per member.
        """
        spatial = self.task == "seg"
        for chunk, read in self._chunks(rows):
            tensors, per_member = {}, []
            for member in self.members:
                key = preprocess_key(member.cfg)
                if key not in tensors:
                    tensors[key] = read["batches"][key].to(self.device, non_blocking=True)
                probs = member_probs(member, tensors[key], self.flips, spatial, self._amp(member), self.scales)
                per_member.append(upsample(probs, read["sizes"]) if spatial
                                  else probs.cpu().numpy().astype(np.float64))
            yield [int(r["image_id"]) for r in chunk], per_member, read["sizes"]

    def predict_classifier(self, rows: pd.DataFrame) -> dict:
        """{image_id (N,), prob (N,) blended, members (M, N)} for a stroke / type ensemble."""
        if self.task == "seg":
            raise SpecError("predict_classifier needs a stroke or type ensemble; this spec is seg (use iter_seg)")
        ids, parts = [], []
        for batch_ids, per_member, _ in self.iter_member_probs(rows):
            ids += batch_ids
            parts.append(np.stack(per_member))
        members = np.concatenate(parts, axis=1) if parts else np.zeros((len(self.members), 0))
        if not len(ids):
            prob = np.zeros(0)
        elif self.spec["blend"] == STACK:
            prob = self._stacked(rows, ids, members)
        else:
            prob = combine(members, self.spec["blend"], self.weights, self.thresholds)
        return {"image_id": np.asarray(ids, dtype=np.int64), "prob": prob, "members": members}

    def _stacked(self, rows, ids: list[int], members: np.ndarray) -> np.ndarray:
        """The stack blend: the level-2 model on the members' probabilities and the seg runs' features (each
        image's seg probabilities resized to the run's OOF resolution first, as on OOF)."""
        features = {f"p:{m.name}": members[i] for i, m in enumerate(self.members)}
        if self.stack_seg is not None:
            sizes = {m["name"]: m.get("oof_size") for m in self.spec["stack"]["seg_members"]}
            per_run, seg_ids = {m.name: [] for m in self.stack_seg.members}, []
            for batch_ids, per_member, _ in self.stack_seg.iter_member_probs(rows):
                seg_ids += batch_ids
                for member, probs in zip(self.stack_seg.members, per_member):
                    per_run[member.name] += [seg_features(p, sizes[member.name]) for p in probs]
            if seg_ids != list(ids):
                raise RuntimeError("stack: the segmenters saw the images in another order than the classifiers")
            for name, values in per_run.items():
                for key in SEG_FEATURES:
                    features[f"{key}:{name}"] = np.asarray([v[key] for v in values])
        return stack_probs(self.spec["stack"], features)

    def iter_seg(self, rows: pd.DataFrame) -> Iterator[tuple[int, np.ndarray]]:
        """(image_id, blended (3, H, W) float32 probabilities at the image's own size), image by image."""
        if self.task != "seg":
            raise SpecError(f"iter_seg needs a seg ensemble; this spec is {self.task}")
        for batch_ids, per_member, _ in self.iter_member_probs(rows):
            for j, image_id in enumerate(batch_ids):
                stacked = np.stack([probs[j] for probs in per_member])
                yield image_id, combine(stacked, self.spec["blend"], self.weights)
