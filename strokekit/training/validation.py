"""One model over a loader: each epoch's validation and the fold's final OOF pass (the same TTA as infer.py).

Under torchrun each rank runs its shard of the loader; rank 0 gets the joined state and every rank rank 0's
metrics (distributed.py).
"""
from __future__ import annotations

import numpy as np
import torch

from strokekit.models.precision import autocast
from strokekit.models.tta import predict_with_tta
from strokekit.progress import bar
from strokekit.training import distributed
from strokekit.vocabulary import resolve_flips, resolve_scales


@torch.no_grad()
def predict_loader(model, loader, task, cfg: dict, device, loss_fn=None, keep_oof=False, progress=False,
                   flips=("none",), scales=(1.0,)):
    """(metrics incl. val_loss, task state with the OOF predictions) of a model over a loader; probabilities
    averaged over `flips` x `scales` as infer.py predicts, val_loss from the plain pass. Under torchrun each rank
    runs its shard; rank 0 gets the joined state (the others None) and every rank rank 0's metrics."""
    model.eval()
    flips, scales = resolve_flips(flips), resolve_scales(scales)
    plain = flips == ["none"] and scales == [1.0]
    state, losses = task.new_state(cfg, keep_oof=keep_oof), []
    for batch in bar(loader, desc="validate", unit="batch", show=progress and distributed.is_main()):
        images = batch["image"].to(device, non_blocking=True)
        if device.type == "cuda" and cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = None
        if loss_fn is not None or plain:
            with autocast(device, cfg["amp"]):
                logits = model(images)
        if loss_fn is not None:
            target = batch["mask" if "mask" in batch else "target"].to(device)
            losses.append(float(loss_fn(logits, target)) * len(images))
        if plain:
            probs = task.probabilities(logits, cfg)
        else:
            with autocast(device, cfg["amp"]):
                probs = predict_with_tta(model, images, flips, spatial=task.name == "seg",
                                         activation=lambda out: task.probabilities(out, cfg), scales=scales).float()
        task.accumulate(state, batch, probs)
    if distributed.enabled():
        state, losses = distributed.gather_state(state, losses)
        if state is not None:
            check_complete(state, loader.dataset)
    out = None
    if state is not None:
        if "groups" in state:  # seg: each image's patient, for the patientwise scores
            state["groups"] = patients_of(loader.dataset.rows)
        out = task.finish(state)
        if losses:
            out = {"val_loss": sum(losses) / len(loader.dataset), **out}
    return distributed.broadcast(out), state


def patients_of(rows) -> dict[int, str]:
    """image_id -> its fold grouping key (patient, else study, else series, else the image: data/index.py)."""
    import pandas as pd

    from strokekit.data.index import group_ids

    table = pd.DataFrame(list(rows))
    for col in ("patient_id", "study_uid", "series_uid"):
        if col not in table:
            table[col] = ""
    return dict(zip(table["image_id"].astype(int), group_ids(table.fillna(""))))


def check_complete(state: dict, dataset) -> None:
    """Gathered validation results hold every image of the data set once, in its order."""
    ids = np.concatenate(state["ids"]).tolist() if state["ids"] else []
    if ids != [int(row["image_id"]) for row in dataset.rows]:
        raise RuntimeError(f"gathered validation covers {len(ids)} images ({len(set(ids))} distinct), "
                           f"the data set has {len(dataset)}: the shards do not tile it")
