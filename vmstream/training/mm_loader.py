"""Image and video batches in one epoch, as the official ``MetaLoader``.

One loader per media type (its own batch size and distributed sampler). An epoch's order
lists each media type once per batch its loader has, shuffled; every step takes the next
batch of the type the order names, so a batch holds one media type and an epoch sees
every batch of both. The official code shuffles on rank 0 and broadcasts; we draw the
order from (seed, epoch), the same on every rank without a collective.
"""

from __future__ import annotations

import random
from typing import Iterator, Mapping

from torch.utils.data import DataLoader

__all__ = ["MixedLoader", "media_order"]


def media_order(lengths: Mapping[str, int], seed: int, epoch: int) -> list[str]:
    order = [name for name, n in lengths.items() for _ in range(n)]
    random.Random(seed * 100003 + epoch).shuffle(order)
    return order


class MixedLoader:
    """Iterates (batch dicts with "media") over several loaders in the shuffled order."""

    def __init__(self, loaders: Mapping[str, DataLoader], seed: int = 0):
        if not loaders:
            raise ValueError("MixedLoader needs at least one loader")
        self.loaders = dict(loaders)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders.values():
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[dict]:
        iters = {name: iter(loader) for name, loader in self.loaders.items()}
        for name in media_order({n: len(d) for n, d in self.loaders.items()}, self.seed, self.epoch):
            yield next(iters[name])
