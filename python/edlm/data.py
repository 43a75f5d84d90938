"""Training data: fixed-size blocks of a prepared token file in a seeded, rank-sharded order
(`PackedDataset`, with MDLM's BOS/EOS "wrap" for BPE), and `load_dataset`, which resolves a named
dataset or a path (preparing it on first use) and opens it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .corpora import dataset_path
from .prepare import read_header
from .tokenizer import Tokenizer

__all__ = ["PackedDataset", "block_order", "load_dataset"]


# --- blocks ----------------------------------------------------------------------------------

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 arrays: a bijection, so keys never tie."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def block_order(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(num_blocks) that depends only on (seed, epoch).

    Plain uint64 arithmetic and a sort rather than a library RNG, whose streams may change between
    numpy versions: a run resumed elsewhere still sees the same data order.
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed % (1 << 64)], dtype=_U64))
        key = _splitmix64(key ^ np.array([epoch % (1 << 64)], dtype=_U64))
        keys = _splitmix64(np.arange(num_blocks, dtype=_U64) + key)
    return np.argsort(keys, kind="stable")


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length blocks of a prepared token file, in a seeded order, sharded across ranks.

    Block j holds tokens [j*S, (j+1)*S) of the stream, S = L - 2 with wrap (then [BOS] + those
    S tokens + [EOS], as MDLM's `wrap` does), else S = L; the tail shorter than S is dropped.
    Items are int64 tensors [L].

    Order: epoch e visits `block_order(num_blocks, seed, e)` (or 0, 1, ... with shuffle=False);
    rank r of W takes every W-th block of it, from the r-th, so the ranks together cover every
    block exactly once per epoch. With drop_last=True the order is first cut to a multiple of W,
    so every rank has the same length (what DDP with a DataLoader needs). `set_epoch` picks the
    epoch for indexing; `batches` walks epoch after epoch by itself and can start anywhere,
    which is how a training run resumes with the same data order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        block_size: int | None = None,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        block_range: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self.block_size = int(block_size or self.header["block_size"])
        self.wrap = bool(self.header["wrap"])
        self.stride = self.block_size - 2 if self.wrap else self.block_size
        if self.stride < 1:
            raise ValueError(f"block_size {self.block_size} leaves no room for text (wrap adds 2)")
        total = self.header["count"] // self.stride
        if total == 0:
            raise ValueError(
                f"{self.path} holds {self.header['count']} tokens, fewer than one block of "
                f"{self.block_size}"
            )
        self.first, stop = block_range if block_range is not None else (0, total)
        if not 0 <= self.first < stop <= total:
            raise ValueError(f"block_range {block_range} is not within the file's {total} blocks")
        self.num_blocks = (
            stop - self.first
        )  # block j of this dataset is block first + j of the file
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._orders: dict[int, np.ndarray] = {}
        self._tokens: np.memmap | None = None

    @property
    def tokens(self) -> np.memmap:
        """The whole token stream, memory-mapped (opened lazily, so workers each open their own)."""
        if self._tokens is None:
            self._tokens = np.memmap(
                self.path, dtype=self.header["dtype"], mode="r", shape=(self.header["count"],)
            )
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_orders": {}}

    def _kept(self) -> int:
        n = self.num_blocks
        return n - n % self.world_size if self.drop_last else n

    def __len__(self) -> int:
        return len(range(self.rank, self._kept(), self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """Global block ids this rank visits in `epoch` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch not in self._orders:
            if self.shuffle:
                order = block_order(self.num_blocks, self.seed, epoch)
            else:
                order = np.arange(self.num_blocks)
            self._orders = {epoch: order[: self._kept()][self.rank :: self.world_size]}
        return self._orders[epoch]

    def blocks(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Blocks by global id: int64 [len(ids), L]."""
        end = (self.first + self.num_blocks) * self.stride
        rows = self.tokens[self.first * self.stride : end].reshape(self.num_blocks, self.stride)
        out = torch.from_numpy(rows[np.asarray(ids, dtype=np.int64)].astype(np.int64))  # [B, S]
        if self.wrap:
            bos = torch.full((out.shape[0], 1), self.header["bos_id"], dtype=torch.int64)
            eos = torch.full((out.shape[0], 1), self.header["eos_id"], dtype=torch.int64)
            out = torch.cat([bos, out, eos], dim=1)  # [B, L]
        return out

    def __getitem__(self, i: int) -> torch.Tensor:
        idx = self.indices()
        if not -len(idx) <= i < len(idx):
            raise IndexError(f"index {i} out of range for {len(idx)} blocks")
        return self.blocks([idx[i]])[0]

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Endless int64 batches [batch_size, L]: this rank's blocks of epoch 0, 1, 2, ...

        Batch k holds items k*B .. (k+1)*B - 1 of that endless sequence, so a run resumed after
        k batches passes start=k and gets the very batches it would have had. A batch may span
        the end of one epoch and the start of the next.
        """
        n = len(self)
        if n == 0:
            raise ValueError(f"rank {self.rank} has no blocks ({self.num_blocks} in all)")
        if batch_size < 1 or start < 0:
            raise ValueError(f"batch_size must be >= 1 and start >= 0, got {batch_size}, {start}")
        pos = start * batch_size
        while True:
            ids = []
            while len(ids) < batch_size:
                epoch, offset = divmod(pos, n)
                take = self.indices(epoch)[offset : offset + batch_size - len(ids)]
                ids.extend(take.tolist())
                pos += len(take)
            yield self.blocks(ids)

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.path)!r}, block_size={self.block_size}, "
            f"blocks={self.num_blocks}, tokenizer={self.header['tokenizer']!r}, "
            f"rank={self.rank}/{self.world_size}, seed={self.seed}, shuffle={self.shuffle})"
        )


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    *,
    tokenizer: str | Tokenizer | None = None,
    block_size: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    text_field: str = "text",
    block_range: tuple[int, int] | None = None,
) -> PackedDataset:
    """`dataset_path` (preparing on first use), then a `PackedDataset` over it (its blocks
    `block_range` = [start, stop) only, when given: how a held-out slice is made)."""
    path = dataset_path(name_or_path, split, tokenizer=tokenizer, text_field=text_field)
    return PackedDataset(
        path,
        block_size,
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        block_range=block_range,
    )
