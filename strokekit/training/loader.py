"""DataLoaders for training and validation: seeded workers, pinned memory on CUDA, and one share per rank
under torchrun (DistributedSampler for training, ShardSampler for validation)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from strokekit.data.dataset import SliceDataset, collate, worker_init_fn
from strokekit.training import distributed


class ShardSampler(Sampler):
    """Rank `rank`'s contiguous block of range(n), without padding (validation under torchrun): the
    blocks of ranks 0, 1, ... joined are range(n), so every image is validated exactly once and gathered
    results come back in the data set's order. (DistributedSampler pads with repeated images instead.)"""

    def __init__(self, n: int, rank: int, world: int):
        self.start, self.stop = n * rank // world, n * (rank + 1) // world

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))


def make_loader(dataset: SliceDataset, cfg: dict, device: torch.device, sampler=None,
                batch_sampler=None, shuffle: bool = False) -> DataLoader:
    """A DataLoader with seeded workers; pinned memory and persistent workers on CUDA.

    Under torchrun each process loads batch_size / world size images per batch: training through a
    DistributedSampler (unless a sampler is given, which is then already this rank's share), validation
    through a ShardSampler.
    """
    cuda = device.type == "cuda"
    workers = cfg["num_workers"]
    kwargs = dict(num_workers=workers, collate_fn=collate, pin_memory=cuda,
                  worker_init_fn=worker_init_fn, persistent_workers=cuda and workers > 0,
                  generator=torch.Generator().manual_seed(cfg["seed"]))
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    world = distributed.world()
    if world > 1 and sampler is None:
        rank = distributed.rank()
        sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"])
                   if shuffle else ShardSampler(len(dataset), rank, world))
    return DataLoader(dataset, batch_size=distributed.per_process_batch(cfg["batch_size"]), sampler=sampler,
                      shuffle=shuffle and sampler is None, drop_last=dataset.train and len(dataset) > cfg["batch_size"],
                      **kwargs)
