"""Torch Dataset over index rows, joint image/mask augmentation, seeded workers, and batch samplers.

Each item: image (C, S, S) float normalised with cfg mean/std, image_id, and, when asked, target (class
label), mask (S, S) class map at the training size, and mask_full (H, W) uint8 at the file's own resolution
(for metrics computed where the organisers compute them). Masks are resized and augmented with
nearest-neighbour interpolation only, and their label set is checked after augmentation. With `cache: true`
images and class maps are read from the preprocessing cache (cache.py), equal to decoding the files.
A pseudo-labelled row (data/pseudo.py) carries an `ignore` file: its training mask holds IGNORE_LABEL there,
which the losses skip (augmentation moves it with the mask; padding and rotation fill background).
"""
from __future__ import annotations

import math
import random

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from strokekit.data.cache import open_cache, overlay_method, resize_step
from strokekit.vocabulary import HEMORRHAGIC, IGNORE_LABEL, ISCHEMIC
from strokekit.data.badinput import BadInputError
from strokekit.data.pseudo import with_ignore
from strokekit.data.neighbours import attach_neighbours, load_input, neighbour_count
from strokekit.data.readers import load_class_map
from strokekit.data.roi import roi_crop
from strokekit.data.window_jitter import jitter_enabled, jittered_input, load_hu

LABELS = {0, 1, 2}


def build_transform(cfg: dict, train: bool) -> A.Compose:
    """Resize to img_size (+ the config's `aug.*` when training). Normalisation happens afterwards."""
    size, aug = cfg["img_size"], cfg["aug"]
    steps = [resize_step(size)]
    if train:
        steps += [
            A.HorizontalFlip(p=aug["hflip"]),
            A.VerticalFlip(p=aug["vflip"]),
            A.Affine(scale=(1 - aug["scale_limit"], 1 + aug["scale_limit"]),
                     translate_percent=(-aug["shift_limit"], aug["shift_limit"]),
                     rotate=(-aug["rotate_limit"], aug["rotate_limit"]), interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0,
                     fill_mask=0, p=aug["shift_scale_rotate"]),
            A.RandomBrightnessContrast(p=aug["brightness_contrast"]),
            A.ElasticTransform(alpha=size * 0.25, sigma=size * 0.05, mask_interpolation=cv2.INTER_NEAREST,
                               border_mode=cv2.BORDER_CONSTANT, p=aug["elastic"]),
        ] + menu_steps(aug, size)
    return A.Compose([s for s in steps if getattr(s, "p", 1) > 0], seed=cfg["seed"])


def menu_steps(aug: dict, size: int) -> list:
    """The augmentation menu (config aug.rot90 ... aug.coarse_dropout, each a probability, all off by
    default): nnU-Net's gamma and low-resolution simulation beside what competitors add. Masks move with
    their images; intensity steps leave masks alone."""
    hole = (max(1, size // 32), max(2, size // 16))
    return [
        A.RandomRotate90(p=aug.get("rot90", 0.0)),
        A.RandomGamma(gamma_limit=(70, 150), p=aug.get("gamma", 0.0)),
        A.Downscale(scale_range=(0.5, 1.0), p=aug.get("low_res", 0.0)),
        A.GridDistortion(border_mode=cv2.BORDER_CONSTANT, p=aug.get("grid_distortion", 0.0)),
        A.CLAHE(clip_limit=2.0, p=aug.get("clahe", 0.0)),
        A.GaussNoise(std_range=(0.02, 0.08), p=aug.get("noise", 0.0)),
        A.GaussianBlur(blur_limit=(3, 5), p=aug.get("blur", 0.0)),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=hole, hole_width_range=hole, fill=0,
                        p=aug.get("coarse_dropout", 0.0)),
    ]


def normalise(image: np.ndarray, cfg: dict) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32, (x / 255 - mean) / std with scalar or per-channel mean/std.

    numpy, not torch: tiny torch ops in a DataLoader contend for the intra-op thread pool.
    """
    mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(-1)
    std = np.asarray(cfg["std"], dtype=np.float32).reshape(-1)
    x = (image.astype(np.float32) * np.float32(1 / 255.0) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def preprocess(image: np.ndarray, cfg: dict) -> torch.Tensor:
    """What a model saw at validation: resize to img_size and normalise (for infer.py)."""
    size = cfg["img_size"]
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[..., None]
    return normalise(image, cfg)


class SliceDataset(Dataset):
    """One item per index row; see the module docstring for what an item holds."""

    def __init__(self, rows: pd.DataFrame, cfg: dict, train: bool, targets=None, masks: bool = False,
                 full_masks: bool = False):
        if neighbour_count(cfg) and "neighbours" not in rows.columns:  # training attaches them from the whole index
            rows = attach_neighbours(rows, neighbour_count(cfg))
        self.rows = rows.reset_index(drop=True).to_dict("records")
        self.cfg, self.train = cfg, train
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.masks, self.full_masks = masks, full_masks
        self.transform = build_transform(cfg, train)
        self.cache = open_cache(cfg)  # None when cfg says no cache
        self.jitter = train and jitter_enabled(cfg)  # HU-window jitter: training reads HU and windows them itself
        self.epoch_seed = torch.zeros(1, dtype=torch.int64).share_memory_()  # written by reseed, read by workers
        self.worker_seed = None  # in a worker: the (epoch seed, worker id) its streams were seeded from
        self.rng = np.random.default_rng(cfg["seed"])  # crops; reseeded with the augmentations

    def __len__(self) -> int:
        return len(self.rows)

    def reseed(self, seed: int) -> None:
        """Fix the augmentation stream (albumentations keeps its own RNG, apart from numpy's and torch's).

        Called in the main process each epoch. Workers, persistent ones included, see the new seed through
        shared memory and reseed themselves from (seed, worker id) at their next item, so the stream is the
        same whether workers were restarted or not (a resumed epoch sees the same augmentations).
        """
        self.epoch_seed[0] = int(seed)
        self.transform.set_random_seed(int(seed) % 2**32)
        self.rng = np.random.default_rng(int(seed) % 2**63)

    def follow_epoch_seed(self) -> None:
        info = get_worker_info()
        key = None if info is None else (int(self.epoch_seed[0]) % 2**63, info.id)
        if key is not None and key != self.worker_seed:
            self.worker_seed = key
            seed = int(np.random.SeedSequence(key).generate_state(1)[0])
            self.transform.set_random_seed(seed)
            np.random.seed(seed)
            self.rng = np.random.default_rng(seed)
            random.seed(seed)

    def jittered(self, hu: np.ndarray) -> np.ndarray:
        """HU -> the input's uint8 channels through this sample's jittered windows (data/window_jitter.py)."""
        return jittered_input(hu, self.cfg, self.rng)

    def class_map(self, i: int, shape) -> np.ndarray:
        row = self.rows[i]
        class_map = (load_class_map(row, overlay_method(self.cfg)) if (row.get("mask") or row.get("overlay"))
                     else None)
        if class_map is None:
            if row.get("class_name") != "no_stroke":
                raise BadInputError(row.get("png") or row.get("dicom"), "a stroke slice without MASK or OVERLAY")
            class_map = np.zeros(shape[:2], dtype=np.uint8)
        return with_ignore(class_map, row.get("ignore"))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(image, mask for the transform, class map at the file's resolution; masks None unless asked).

        From the preprocessing cache, image and mask are already at img_size (the transform's resize then
        changes nothing); without it they are the files' own size.
        """
        row, want_masks = self.rows[i], self.masks or self.full_masks
        if self.cache is None:
            image = self.jittered(load_hu(row, self.cfg)) if self.jitter else load_input(row, self.cfg)
            hw = image.shape[:2]
            mask = full = self.class_map(i, hw) if want_masks else None
            mask_hw = None if full is None else full.shape
        else:
            if self.jitter:
                hu, hw = self.cache.hu(row)
                image = self.jittered(hu)
            else:
                image, hw = self.cache.image(row)
            mask, full, mask_hw = (self.cache.class_maps(row, lambda: self.class_map(i, hw), self.full_masks)
                                   if want_masks else (None, None, None))
        if mask_hw is not None and tuple(mask_hw) != tuple(hw):
            raise BadInputError(row.get("mask") or row.get("overlay"),
                                f"mask {tuple(mask_hw)} and its image {tuple(hw)} differ in size")
        if self.cfg.get("seg_lesion_type"):
            mask, full = (keep_lesion_type(m, self.cfg["seg_lesion_type"]) for m in (mask, full))
        return image, mask, full

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        self.follow_epoch_seed()
        image, mask, full = self.load(i)
        roi = self.cfg["aug"].get("roi_crop", 0.0) if self.train else 0.0
        if roi and self.rng.random() < roi:  # aug.roi_crop, before the transform's resize
            image, mask = roi_crop(image, mask, self.rng)
        item = {"image_id": int(row["image_id"]), "index": i}
        if mask is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            if self.train and self.cfg.get("crop_size"):
                image, mask = foreground_crop(image, mask, self.cfg["crop_size"], self.cfg["fg_crop_share"], self.rng)
            labels = set(np.unique(mask).tolist())
            if not labels <= (LABELS | {IGNORE_LABEL} if row.get("ignore") else LABELS):
                raise ValueError(f"image {row['image_id']}: augmentation made mask labels {sorted(labels - LABELS)}")
            if self.masks:
                item["mask"] = torch.from_numpy(mask.astype(np.int64))
            if self.full_masks:
                item["mask_full"] = full
        else:
            image = self.transform(image=image)["image"]
        item["image"] = normalise(image, self.cfg)
        if self.targets is not None:
            item["target"] = torch.tensor(self.targets[i])
        return item


def foreground_crop(image: np.ndarray, mask: np.ndarray, size: int, fg_share: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A `size` x `size` training crop (config `crop_size`), as nnU-Net samples patches: with probability
    `fg_share` centred on a random lesion pixel (when the mask has one), else at a random place. The crop
    may reach past the border: what lies outside is zero-padded (image) and background (mask)."""
    h, w = mask.shape[:2]
    flat = mask.reshape(-1)
    lesion = np.flatnonzero((flat > 0) & (flat != IGNORE_LABEL)) if fg_share > 0 and rng.random() < fg_share \
        else np.empty(0)
    if lesion.size:
        cy, cx = divmod(int(lesion[rng.integers(lesion.size)]), w)
        top, left = cy - size // 2, cx - size // 2
    else:
        top, left = int(rng.integers(min(0, h - size), max(0, h - size) + 1)), \
            int(rng.integers(min(0, w - size), max(0, w - size) + 1))
    out_image = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    out_mask = np.zeros((size, size), dtype=mask.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
    out_image[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    out_mask[y0 - top:y1 - top, x0 - left:x1 - left] = mask[y0:y1, x0:x1]
    return out_image, out_mask


def keep_lesion_type(class_map: np.ndarray | None, lesion_type: str) -> np.ndarray | None:
    """A type-specific segmenter's target: the other lesion class becomes background."""
    if class_map is None:
        return None
    other = HEMORRHAGIC if lesion_type == "ischemic" else ISCHEMIC
    return np.where(class_map == other, 0, class_map).astype(class_map.dtype)


def collate(batch: list[dict]) -> dict:
    """Stack tensors and ints; keep full-resolution masks (which may differ in size) as a list.

    Tensors are stacked by numpy: with num_workers=0, torch.stack runs on the intra-op thread pool, which
    the model's threads keep busy (measured 10-50x slower than np.stack on a loaded 2-core machine).
    """
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key == "mask_full":
            out[key] = values
        elif torch.is_tensor(values[0]):
            out[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
        else:
            out[key] = torch.as_tensor(values)
    return out


def worker_init_fn(worker_id: int) -> None:
    """Each worker: its own seed for numpy and random (SliceDataset reseeds per epoch); no OpenCV threads."""
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32  # base seed of this iterator + worker id
    np.random.seed(seed)
    random.seed(seed)


# ---- samplers ----

def shard_of_batches(order: list[int], batch_size: int, rank: int, world: int) -> list[int]:
    """Rank `rank`'s share of a global index order cut into global batches of `batch_size` (a multiple of
    `world`): element j of each batch goes to rank j % world, so the ranks' k-th batches of batch_size /
    world together are the global k-th batch (DistributedSampler deals indices out the same way). A tail
    shorter than a batch is dropped, as training drops it; an order shorter than one batch is repeated."""
    if world == 1:
        return list(order)
    if len(order) < batch_size:
        order = (list(order) * math.ceil(batch_size / max(len(order), 1)))[:batch_size]
    return list(order[:len(order) // batch_size * batch_size][rank::world])


class BalancedSampler(Sampler):
    """Draws len(labels) (or `num_samples`) indices with replacement, each class equally likely (classifiers).

    Under torchrun (world > 1) every rank draws the same global sequence and keeps its share of each
    global batch of `batch_size` (shard_of_batches); in one process it is the whole sequence.
    """

    def __init__(self, labels, seed: int = 0, batch_size: int = 1, rank: int = 0, world: int = 1,
                 num_samples: int | None = None):
        self.labels = np.asarray(labels)
        self.n = int(num_samples or len(self.labels))  # an epoch's draws (config epoch_steps x batch_size)
        _, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        self.weights = torch.as_tensor(1.0 / counts[inverse], dtype=torch.double)
        self.seed, self.epoch = seed, 0
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return max(1, self.n // self.batch_size) * (self.batch_size // self.world)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen).tolist()
        return iter(shard_of_batches(order, self.batch_size, self.rank, self.world))


class LesionBatchSampler(Sampler):
    """Batches with round(lesion_share * batch_size) slices holding a lesion, the rest without (seg); with
    rest="all" the rest from every slice, lesion or not (the DPN-U-Net paper's sampling).

    Each pool is walked in a fresh shuffled order and restarted when used up; an epoch has
    len(dataset) // batch_size batches (at least one), or `num_batches`. Under torchrun (world > 1) every
    rank builds the same global batches and keeps batch_size / world of each, lesion and clear slices dealt
    out alike.
    """

    def __init__(self, has_lesion, batch_size: int, lesion_share: float, seed: int = 0, rank: int = 0,
                 world: int = 1, rest: str = "clear", num_batches: int | None = None):
        has_lesion = np.asarray(has_lesion, dtype=bool)
        self.lesion, self.clear = np.flatnonzero(has_lesion), np.flatnonzero(~has_lesion)
        if rest == "all":
            self.clear = np.arange(len(has_lesion))
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.n_lesion = int(round(lesion_share * batch_size))
        if self.n_lesion and not len(self.lesion):
            raise ValueError("lesion sampler: no training slice holds a lesion")
        if self.n_lesion < batch_size and not len(self.clear):
            raise ValueError(f"lesion sampler with lesion_share={lesion_share} needs slices without lesions: "
                             "set seg_negatives > 0 (a share of no-stroke slices) or lesion_share: 1.0")
        self.num_batches = int(num_batches or max(1, len(has_lesion) // batch_size))
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        rng = np.random.default_rng(self.seed * 1000 + self.epoch)
        lesion, clear = _endless(self.lesion, rng), _endless(self.clear, rng)
        for _ in range(self.num_batches):
            batch = [next(lesion) for _ in range(self.n_lesion)]
            batch += [next(clear) for _ in range(self.batch_size - self.n_lesion)]
            if self.world == 1:
                yield [int(i) for i in rng.permutation(batch)]
            else:  # the same draw as one process; this rank keeps the slots j % world == rank
                yield [int(batch[j]) for j in rng.permutation(len(batch)) if j % self.world == self.rank]


def _endless(pool: np.ndarray, rng: np.random.Generator):
    while len(pool):
        yield from rng.permutation(pool)
