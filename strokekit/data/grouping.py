"""Fold groups without patient ids: slices of one scan found by image similarity (kfold.py --group-by).

The public release carries no reliable patient ids, so neighbouring slices of one patient would land on both
sides of a random split. Two kinds of link join slices, and every connected set of links (union-find, here
scipy's connected components) becomes one group:

- **pose**: the slices of one series share the head's position and tilt in the image (the patient lies still,
  the reconstruction's field of view is fixed). From the head mask (pixels above air in the brain window,
  holes filled, opened so that the head holder and the table do not join it, largest region) each slice
  gets a pose signature: centre x, centre y (fractions of the image half-width), tilt of the long axis
  (radians) and width / length. Two slices link when every part differs by at most its tolerance (a
  Chebyshev ball, found with a k-d tree); each slice also links to its nearest neighbour within `nearest`
  tolerances, for a slice whose pose reads a little off (skull base, vertex).
- **near-duplicate**: a 256-bit difference hash (dHash, 16 x 17 box-filtered thumbnail) per slice; two slices
  link when their hashes differ in at most `dup_bits` bits (XOR + popcount over packed uint64 words, in
  row blocks); near-empty slices (under MIN_HASH_BITS bits set) take no part.

Links chain, so groups are coarser than patients where two patients lie alike, and in a crowded set (thousands
of slices) a few far links would join nearly everything. So links are taken closest first (Kruskal's order)
and one that would make a group larger than `max_group` is refused: kfold.py caps groups at half a fold and
reports how many links it refused (each may leave a patient split) and how large the groups are.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from strokekit.data.dicom import read_dicom_hu, window

from strokekit.data.readers import BRAIN_WINDOW, read_png
from strokekit.errors import UserError
from strokekit.progress import bar

POSE_COLUMNS = ["centre_x", "centre_y", "tilt", "aspect"]
HASH_SIDE = 16                      # dHash of 16 x 16 gradients = 256 bits = 4 uint64 words
MIN_HASH_BITS = 32                  # a hash with fewer set bits (a near-empty slice) links no near-duplicates
HEAD_LEVEL = 10                     # grey level (brain window) above which a pixel is head, not air


@dataclass(frozen=True)
class SimilarityParams:
    """Tolerances of the two link kinds (see the module docstring) and the working size of the images."""
    centre_tol: float = 0.0125      # head centre, fraction of the image half-width (0.8 px at 128 px)
    tilt_tol: float = 0.05          # radians (2.9 degrees)
    aspect_tol: float = 0.025       # head width / length
    nearest: float = 2.0            # every slice also links to its nearest neighbour within this many tolerances
    dup_bits: int = 2               # near-duplicates: dHash bits that may differ (of 256); -1 turns it off
    work_size: int = 128            # images are box-filtered to this longest side first

    def scales(self) -> np.ndarray:
        return np.array([self.centre_tol, self.centre_tol, self.tilt_tol, self.aspect_tol])


class GroupingError(UserError, ValueError):
    """The images cannot be grouped (nothing to read, bad tolerances)."""


# ---- one slice -> pose signature and hash ----

def slice_grey(row) -> np.ndarray:
    """The slice as brain-window uint8 grey: its PNG, else its DICOM windowed like the organisers' PNGs."""
    if row.get("png"):
        return read_png(row["png"])
    if row.get("dicom"):
        return window(read_dicom_hu(row["dicom"]), *BRAIN_WINDOW)
    raise GroupingError(f"image {row.get('image_id')}: no PNG or DICOM file to group it by")


def signature(grey: np.ndarray, work_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(pose (4,) float64 — NaN when no head is found, dHash (4,) uint64) of one brain-window slice."""
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8))
    scale = work_size / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BOX)
    small = np.asarray(image)
    return head_pose(small), dhash(image)


def head_pose(grey: np.ndarray) -> np.ndarray:
    """Centre x, centre y (fractions of the half-width around the image centre), tilt, width / length."""
    # holes (ventricles, the fat layer) filled first; then an opening cuts off thin bright lines (head holder,
    # table) and the thin false region filled where the holder's arc touches the head
    mask = ndimage.binary_fill_holes(grey > HEAD_LEVEL)
    mask = ndimage.binary_opening(mask, iterations=max(1, round(3 * max(grey.shape) / 128)))
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.full(4, np.nan)
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    rows, cols = np.nonzero(mask)
    if len(rows) < 20:
        return np.full(4, np.nan)
    half = max(grey.shape) / 2
    x, y = (cols + 0.5 - grey.shape[1] / 2) / half, (rows + 0.5 - grey.shape[0] / 2) / half
    cx, cy = x.mean(), y.mean()
    values, vectors = np.linalg.eigh(np.cov(np.stack([x - cx, y - cy])))
    major = vectors[:, 1]
    tilt = (np.arctan2(major[0], major[1]) + np.pi / 2) % np.pi - np.pi / 2   # long axis vs the vertical
    return np.array([cx, cy, tilt, np.sqrt(max(values[0], 0) / max(values[1], 1e-12))])


def dhash(image: Image.Image, margin: float = 2.0) -> np.ndarray:
    """256-bit difference hash: is each pixel of a 17 x 16 box-filtered thumbnail brighter than its left
    neighbour by more than `margin` grey levels (the margin keeps flat background from flipping bits on noise)."""
    thumb = np.asarray(image.convert("F").resize((HASH_SIDE + 1, HASH_SIDE), Image.BOX), dtype=np.float32)
    bits = (thumb[:, 1:] > thumb[:, :-1] + margin).ravel()
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _signature_job(job) -> tuple[np.ndarray, np.ndarray]:
    row, work_size = job
    return signature(slice_grey(row), work_size)


def signatures(index: pd.DataFrame, work_size: int = 128, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pose (N, 4) and hashes (N, 4) of every row of `index`, read with `workers` processes."""
    jobs = [(row, work_size) for row in index[["image_id", "png", "dicom"]].to_dict("records")]
    if not jobs:
        raise GroupingError("no images to group")
    if workers > 1 and len(jobs) > 64:
        with multiprocessing.Pool(workers) as pool:
            out = list(bar(pool.imap(_signature_job, jobs, chunksize=32), total=len(jobs), desc="grouping",
                           unit="image"))
    else:
        out = [_signature_job(job) for job in bar(jobs, desc="grouping", unit="image")]
    return np.stack([p for p, _ in out]), np.stack([h for _, h in out])


# ---- links and groups ----

def pose_pairs(pose: np.ndarray, params: SimilarityParams) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) index pairs whose pose parts all differ by at most their tolerances (rows with NaN: none), and
    each pair's distance in tolerances (the largest part)."""
    ok = np.flatnonzero(np.isfinite(pose).all(axis=1))
    if len(ok) < 2:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    scaled = pose[ok] / params.scales()
    tree = cKDTree(scaled)
    pairs = tree.query_pairs(1.0, p=np.inf, output_type="ndarray").reshape(-1, 2)
    if params.nearest > 1:  # a slice whose pose was measured a little off (skull base, vertex) joins its closest
        dist, nearest = tree.query(scaled, k=2, p=np.inf)
        close = np.flatnonzero(dist[:, 1] <= params.nearest)
        pairs = np.concatenate([pairs, np.stack([close, nearest[close, 1]], axis=1)])
    dist = np.abs(scaled[pairs[:, 0]] - scaled[pairs[:, 1]]).max(axis=1)
    return ok[pairs].reshape(-1, 2), dist


def hamming_pairs(codes: np.ndarray, max_bits: int, block: int = 256, min_set: int = 0) -> np.ndarray:
    """(M, 2) index pairs i < j whose packed hashes (N, W) uint64 differ in at most `max_bits` bits; hashes
    with fewer than `min_set` bits set take no part."""
    rows = np.flatnonzero(np.bitwise_count(codes).sum(axis=1) >= min_set)
    if max_bits < 0 or len(rows) < 2:
        return np.empty((0, 2), dtype=np.int64)
    codes, out = codes[rows], []
    for start in range(0, len(codes), block):
        part = codes[start:start + block]
        dist = np.bitwise_count(part[:, None, :] ^ codes[None, :, :]).sum(axis=-1, dtype=np.int32)
        i, j = np.nonzero(dist <= max_bits)
        i += start
        keep = j > i
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return rows[np.concatenate(out)].astype(np.int64).reshape(-1, 2)


def link_groups(n: int, *pair_sets: np.ndarray) -> np.ndarray:
    """Group label per item 0..n-1: the connected components of all the links (union-find)."""
    pairs = np.concatenate([p.reshape(-1, 2) for p in pair_sets]) if pair_sets else np.empty((0, 2), int)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def capped_groups(n: int, pairs: np.ndarray, dist: np.ndarray, max_group: int = 0) -> tuple[np.ndarray, int]:
    """Group label per item 0..n-1 by union-find over the links, closest first; with max_group > 0 a link that
    would make a group larger is refused (links chain: in a crowded set a few far links would otherwise join
    everything). Returns the labels and the number of links refused."""
    parent, size, refused = np.arange(n), np.ones(n, dtype=np.int64), 0

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for k in np.argsort(dist, kind="stable"):
        a, b = root(int(pairs[k, 0])), root(int(pairs[k, 1]))
        if a == b:
            continue
        if max_group > 0 and size[a] + size[b] > max_group:
            refused += 1
            continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b], size[a] = a, size[a] + size[b]
    return pd.factorize(np.array([root(i) for i in range(n)]))[0], refused   # numbered by first member


def similarity_groups(index: pd.DataFrame, params: SimilarityParams = SimilarityParams(),
                      workers: int = 1, max_group: int = 0) -> pd.DataFrame:
    """One row per image of `index`: image_id, group ('sim-00000' ...), group_size, links, pose, hash.

    max_group > 0 caps the group size (capped_groups); table.attrs['refused_links'] counts the links refused."""
    _check(params)
    index = index.reset_index(drop=True)
    pose, codes = signatures(index, params.work_size, workers)
    by_pose, pose_dist = pose_pairs(pose, params)
    by_hash = hamming_pairs(codes, params.dup_bits, min_set=MIN_HASH_BITS)
    pairs = np.concatenate([by_hash, by_pose])                       # near-duplicates first: distance 0
    labels, refused = capped_groups(len(index), pairs, np.concatenate([np.zeros(len(by_hash)), pose_dist]),
                                    max_group)
    table = pd.DataFrame({"image_id": index["image_id"].to_numpy(), "group": [f"sim-{k:05d}" for k in labels]})
    table["group_size"] = table.groupby("group")["image_id"].transform("size")
    table["links"] = np.bincount(pairs.ravel(), minlength=len(index))
    table[POSE_COLUMNS] = np.round(pose, 5)
    table["dhash"] = ["".join(f"{int(w):016x}" for w in row) for row in codes]
    table.attrs["refused_links"] = refused
    return table


def _check(params: SimilarityParams) -> None:
    for name in ("centre_tol", "tilt_tol", "aspect_tol"):
        if not getattr(params, name) > 0:
            raise GroupingError(f"{name} must be > 0 (got {getattr(params, name)})")
    if params.work_size < 32:
        raise GroupingError(f"work_size must be >= 32 (got {params.work_size})")


def group_summary(groups: pd.Series, n_folds: int | None = None) -> str:
    """Number of groups and their size distribution, one line each; warns about a group too big for a fold."""
    sizes = groups.value_counts()
    bins = [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, None)]
    parts = []
    for low, high in bins:
        count = int(((sizes >= low) & (sizes <= (high or sizes.max()))).sum()) if len(sizes) else 0
        if count:
            parts.append(f"{low}{'+' if high is None else '' if high == low else f'-{high}'}: {count}")
    lines = [f"{len(sizes)} groups over {len(groups)} images; sizes min {sizes.min()}, median "
             f"{sizes.median():g}, max {sizes.max()} ({sizes.max() / len(groups):.1%} of the images)",
             "  groups by size: " + ", ".join(parts)]
    if n_folds and sizes.max() > len(groups) / (2 * n_folds):
        lines.append(f"  warning: the largest group holds {sizes.max()} images, over half a fold "
                     f"({len(groups) / n_folds:.0f}); cap it (--max-group) or lower the tolerances "
                     "(--centre-tol, --tilt-tol, --aspect-tol)")
    return "\n".join(lines)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
