"""`data=wds`: webdataset tar shards as img2dataset writes them (`<key>.jpg|png|webp` + `<key>.txt` per sample).

    python train.py data=wds data.train_shards='DIR/train-{000000..000007}.tar' \
        data.val_shards='DIR/val-{000000..000001}.tar'

Shards are streamed with the `webdataset` package, so a dataset far larger than memory trains in one pass per epoch:
each epoch the shard list is shuffled (seeded by `data.split_seed` and the epoch), split by process (DDP) and then
by DataLoader worker, so every sample is read once per epoch whatever the number of processes and workers, and
samples are shuffled in a `data.shuffle_buffer` within each worker. Batches are made in the workers.

Before training starts every shard's tar headers and captions are read (image bytes are skipped): that trains
the tokenizer on the training captions, counts the samples (the epoch length) and finds truncated shards and
samples without an image or caption before the run starts. A picture that fails to decode is found when it is
streamed: the run stops there with one line naming the shard and key (`data.on_bad_sample=skip` skips it).
Without `data.val_shards`, a seeded `data.val_fraction` of the samples is val (both streams read all shards).
"""

from __future__ import annotations

import math
import random
import tarfile
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nanovlm.data.datamodule import Gallery
from nanovlm.data.disk import DiskDataModule
from nanovlm.data.images import BadImage, ImageTransform, open_rgb
from nanovlm.data.index.samples import BadData
from nanovlm.data.index.shards import IMAGE_EXTENSIONS, split_key
from nanovlm.data.index.shards import read as read_index
from nanovlm.data.pairs import collate, gallery_of

# Lightning warns that an IterableDataset's length can be wrong under several workers; a ShardStream's is counted
# for exactly the workers it splits its shards between.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")


class ShardStream(IterableDataset):
    """The samples `items` ({(shard, key): (index, caption ids)}) of `shards`, decoded and batched in the worker.

    Yields batches in nanovlm's contract, each with "bad": the lines of samples that failed to decode (the
    datamodule fails on them or counts them). `split_processes=False` (the gallery) reads every shard here."""

    def __init__(self, shards, items, tokens, transform, batch_size, shuffle_buffer, seed, split_processes=True):
        self.shards, self.items, self.tokens, self.transform = shards, items, tokens, transform
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed
        self.split_processes = split_processes
        self.epoch = 0  # each worker (persistent) or the main process counts its own passes: all count alike
        self.length = 0  # batches per epoch in this process (the datamodule counts them from the scan)

    def __len__(self) -> int:
        return self.length

    def my_shards(self) -> list[str]:
        """This epoch's shard order (the same in every process and worker), then this process's and worker's share."""
        order = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        sources: Any = [{"url": s} for s in order]
        if self.split_processes:
            sources = wds.split_by_node(sources)
        return [s["url"] for s in wds.split_by_worker(sources)]

    def samples(self, shards: list[str]) -> Iterator[dict[str, Any]]:
        for shard in shards:
            try:
                for raw in wds.tarfile_to_samples()(iter([{"url": shard}])):
                    found = self.items.get((shard, raw["__key__"]))
                    if found is not None:  # not rejected when scanned, and in this split
                        yield self.decode(shard, raw, *found)
            except Exception as error:  # a shard that changed since it was scanned
                yield {"bad": f"{shard}: not a readable tar shard ({type(error).__name__}: {error})"}

    def decode(self, shard: str, raw: dict[str, Any], index: int, ids: list[int]) -> dict[str, Any]:
        data = next(raw[e] for e in IMAGE_EXTENSIONS if e in raw)
        try:
            image = self.transform(open_rgb(data))
        except BadImage as error:
            return {"bad": f"{shard} sample {raw['__key__']!r}: its image is {error}"}
        caption = ids[int(torch.randint(len(ids), ()))] if len(ids) > 1 else ids[0]
        return {"image": image, "tokens": self.tokens[caption], "caption_id": caption, "index": index}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, worker.id if worker else 0)))
        samples = self.samples(self.my_shards())
        self.epoch += 1
        if self.shuffle_buffer > 0:
            samples = shuffled(samples, self.shuffle_buffer, rng)
        chunk: list[dict[str, Any]] = []
        good = 0
        for sample in samples:
            chunk.append(sample)
            good += "bad" not in sample
            if good == self.batch_size:
                yield collate(chunk)
                chunk, good = [], 0
        if chunk:
            yield collate(chunk)


def shuffled(samples: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A shuffle buffer: keep `size` samples, emit a random one as each new one arrives (webdataset's shuffle)."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class ShardsDataModule(DiskDataModule):
    """Webdataset shards for training (and validation); the other keys are DiskDataModule's."""

    reader = staticmethod(read_index)

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        shuffle_buffer: int = 1000,
        **common: Any,
    ) -> None:
        if shuffle_buffer < 0:
            raise BadData(f"data.shuffle_buffer must be >= 0 samples (0: no shuffling), got {shuffle_buffer}")
        self.keys = {"train_shards": train_shards, "val_shards": val_shards}
        self.shuffle_buffer = shuffle_buffer
        super().__init__(**common)

    def open_image(self, index: int):
        """Sample `index` read from its shard (evaluation's `image=`; training streams instead)."""
        pairs, i = (self.train_pairs, index) if index < self.n_train else (self.val_pairs, index - self.n_train)
        shard, key = pairs.images[i]
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if member.isfile() and split_key(member.name) in {(key, e) for e in IMAGE_EXTENSIONS}:
                    return open_rgb(tar.extractfile(member).read())
        raise BadData(f"{shard} sample {key!r}: no image")

    def stream(self, train: bool, split_processes: bool = True, augment: bool | None = None) -> ShardStream:
        pairs, first = (self.train_pairs, 0) if train else (self.val_pairs, self.n_train)
        items = {image: (first + i, self.table.ids[first + i]) for i, image in enumerate(pairs.images)}
        shards = sorted({shard for shard, _ in pairs.images})
        transform = ImageTransform(self.image_size, self.augment and train if augment is None else augment)
        buffer = self.shuffle_buffer if train else 0
        seed = self.split_seed
        return ShardStream(shards, items, self.tokens, transform, self.batch_size, buffer, seed, split_processes)

    def batches_per_epoch(self, stream: ShardStream) -> int:
        """How many batches this process's workers yield per epoch (each worker ends with a partial batch)."""
        counts: dict[str, int] = {}
        for shard, _ in stream.items:
            counts[shard] = counts.get(shard, 0) + 1
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        mine = stream.shards[rank::world] if stream.split_processes else stream.shards
        workers = max(1, self.num_workers)
        return sum(math.ceil(sum(counts[s] for s in mine[w::workers]) / self.batch_size) for w in range(workers))

    def stream_loader(self, stream: ShardStream, persistent: bool = True) -> DataLoader:
        """Batches come made from the stream (batch_size=None); its length is this process's batches per epoch."""
        stream.length = self.batches_per_epoch(stream)
        workers = self.num_workers
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=persistent and workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.stream_loader(self.stream(train=True))

    def val_dataloader(self) -> DataLoader:
        return self.stream_loader(self.stream(train=False))

    def gallery(self) -> Gallery:
        """Every val sample (all shards, in this process), decoded once without augmentation."""
        if self._gallery is None:
            parts = [self.stream(train=False, split_processes=False)]
            if self.gallery_choice == "world":
                parts.insert(0, self.stream(train=True, split_processes=False, augment=False))
            batches = [self.on_before_batch_transfer(b, 0) for part in parts for b in self.stream_loader(part, False)]
            images = torch.cat([b["image"] for b in batches])
            index = torch.cat([b["index"] for b in batches])
            order = index.argsort()  # workers interleave their shards: rows in id order
            images, index = images[order], index[order]
            self._gallery = gallery_of(images, index, [self.table.ids[int(i)] for i in index], self.tokens)
        return super().gallery()
