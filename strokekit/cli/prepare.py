"""Fill the preprocessing cache ahead of training: every training image decoded, windowed and resized once.

    python prepare.py --config configs/unet_r34_seg.yaml                   # the config's data, size, windows
    python prepare.py --config configs/tiny_stroke.yaml --data /data/TEKNOFEST --set img_size=384
    python prepare.py --config configs/tiny_seg.yaml --cache-dir /scratch/cache --workers 4

Training fills the cache by itself on first use (config `cache: true`, the default), so this is optional: it
does the same work over several processes before the first epoch. Entries go to the config's `cache_dir`
(default <data>/.strokekit/cache) and depend on the image source, windows and img_size: run it once per
preprocessing you train with. Seg configs also store the class maps (at img_size and at full resolution).
A second run writes only what changed; files that cannot be read are listed and make the exit status 1.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

from strokekit.config import ConfigError, add_config_args, load_config
from strokekit.config.settings import anchor_paths, typed_keys
from strokekit.data.cache import cache_folder, fill_row, open_cache
from strokekit.data.index import build_index
from strokekit.data.neighbours import attach_neighbours, neighbour_count
from strokekit.data.badinput import BadInputError
from strokekit import progress
from strokekit.progress import bar as progress_bar
from strokekit.errors import script_main

_worker = {}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data", help="data set root (overrides the config's `data`)")
    parser.add_argument("--cache-dir", help="cache folder (overrides the config's `cache_dir`)")
    parser.add_argument("--workers", type=int, default=2, help="processes decoding images (default 2)")
    progress.add_argument(parser)
    return parser.parse_args(argv)


def _init(cfg: dict, labels: bool) -> None:
    import cv2

    cv2.setNumThreads(0)  # one image per process; no OpenCV thread pool on top
    _worker.update(cache=open_cache(cfg), labels=labels)


def _fill(row: dict) -> tuple[int, str | None]:
    try:
        return fill_row(_worker["cache"], row, _worker["labels"]), None
    except BadInputError as err:
        return 0, str(err)


def fill(cfg: dict, rows: list[dict], workers: int = 2, show: bool = True) -> dict:
    """Fill `cfg`'s cache for `rows` over `workers` processes: {rows, written, errors, seconds}."""
    labels, started = cfg["task"] == "seg", time.perf_counter()
    if workers > 1:
        with multiprocessing.Pool(workers, initializer=_init, initargs=(cfg, labels)) as pool:
            results = list(progress_bar(pool.imap_unordered(_fill, rows, chunksize=8), total=len(rows),
                                        desc="prepare", unit="image", show=show))
    else:
        _init(cfg, labels)
        results = [_fill(row) for row in progress_bar(rows, desc="prepare", unit="image", show=show)]
    return {"rows": len(rows), "written": sum(n for n, _ in results),
            "errors": [err for _, err in results if err], "seconds": time.perf_counter() - started}


def folder_size(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.npz")) if folder.is_dir() else 0


@script_main
def main(argv=None) -> int:
    args = parse_args(argv)
    progress.set_enabled(not args.no_progress)
    cfg = load_config(args.config, args.set)
    cfg.update({k: v for k, v in (("data", args.data), ("cache_dir", args.cache_dir)) if v})
    anchor_paths(cfg, typed_keys(args.set, data=args.data, cache_dir=args.cache_dir))
    cfg["cache"] = True
    folder = cache_folder(cfg)
    if folder is None:
        raise ConfigError(f"data folder {cfg['data']} does not exist; pass --data (or --cache-dir)")
    index, _ = build_index(cfg["data"])
    rows = index[index["split"] == "train"]
    if neighbour_count(cfg):  # each slice's entry holds its neighbours, looked up as training looks them up
        rows = attach_neighbours(rows, neighbour_count(cfg), pool=index)
    rows = rows.to_dict("records")
    print(f"{len(rows)} training images of {cfg['data']} -> {folder} ({cfg['image_source']}, "
          f"img_size {cfg['img_size']}{', class maps' if cfg['task'] == 'seg' else ''}; {args.workers} workers)")
    result = fill(cfg, rows, workers=max(1, args.workers))
    print(f"{result['written']} entries written, {result['rows'] - len(result['errors'])} images ready in "
          f"{result['seconds']:.1f}s ({result['rows'] / max(result['seconds'], 1e-9):.0f} images/s); "
          f"cache holds {folder_size(folder) / 2**20:.0f} MiB")
    for err in result["errors"][:10]:
        print(f"  unreadable: {err}", file=sys.stderr)
    if result["errors"]:
        print(f"{len(result['errors'])} images could not be read (training reports them too)", file=sys.stderr)
    return 1 if result["errors"] else 0


def entry_point() -> None:
    """`python prepare.py` and the console command `strokekit-prepare`."""
    sys.exit(main())
