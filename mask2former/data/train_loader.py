"""A training data loader whose position can be saved and restored exactly.

Detectron2's training loader cannot resume: its sampler is one shuffled stream per seed that
restarts from the beginning, the augmentations draw from each worker's global random generators
(seeded once per worker start), and its iterator consumes the main process's torch generator.
Here instead:

* item ``j`` of this process is element ``j * world_size + rank`` of an infinite stream whose
  epoch ``e`` is a permutation drawn from ``(seed, e)`` only, so any position can be reached
  directly;
* item ``j`` is mapped (decoded, augmented) with ``random``, NumPy and torch seeded from
  ``(seed, j-th stream position)``, in whichever process maps it, and the caller's generator
  states are put back afterwards: the data do not depend on the number of workers, and mapping in
  the main process (``num_workers=0``) leaves the training's own randomness untouched;
* the state (:meth:`ResumableTrainLoader.state_dict`) is the next item to pull and the items held
  in the aspect-ratio buckets, as of the batches the trainer has taken: batches prefetched by the
  workers but not consumed are mapped again, identically, after a resume.
"""
import contextlib
import logging
import random
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.utils.data as torchdata

import detectron2.utils.comm as comm

__all__ = ["ResumableTrainLoader", "seeded_rngs", "restore_rng_states", "rng_states"]

logger = logging.getLogger(__name__)

# Detectron2's MapDataset gives up warning after this many failed attempts; we stop with an error.
_MAX_MAPPING_ATTEMPTS = 10


def _derived_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def rng_states() -> Dict:
    """The global generators' states, as tensors / plain data (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    states = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Dict) -> None:
    """Puts back what :func:`rng_states` returned."""
    random.setstate(_as_tuples(states["python"]))
    numpy_state = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    # random.setstate wants tuples; a round trip through some serialisers gives lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Runs the block with ``random``, NumPy and torch (CPU) seeded from ``seed``, then restores
    the generators as they were."""
    saved = rng_states()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        restore_rng_states(saved)


def _epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(_derived_seed(seed, epoch)))


class _MappedStream(torchdata.Dataset):
    """Map-style dataset indexed by stream position: returns (position, mapped dataset dict)."""

    def __init__(self, dataset_dicts: Sequence[Dict], mapper: Callable, seed: int):
        self.dataset_dicts = dataset_dicts
        self.mapper = mapper
        self.seed = seed
        self._epoch = (None, None)  # (epoch, permutation) cached per process

    def __len__(self):
        return len(self.dataset_dicts)

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset_dicts))
        if self._epoch[0] != epoch:
            self._epoch = (epoch, _epoch_permutation(self.seed, epoch, len(self.dataset_dicts)))
        return int(self._epoch[1][offset])

    def __getitem__(self, position: int):
        index = self.index_at(position)
        for attempt in range(_MAX_MAPPING_ATTEMPTS):
            with seeded_rngs(_derived_seed(self.seed, position, attempt)):
                if attempt > 0:
                    # The mapper rejected the item (e.g. a crop without annotations): another
                    # item, drawn from this position's generator so that a resume draws it too.
                    index = random.randrange(len(self.dataset_dicts))
                mapped = self.mapper(self.dataset_dicts[index])
            if mapped is not None:
                return position, mapped
        raise RuntimeError(
            f"The training mapper returned None for {_MAX_MAPPING_ATTEMPTS} items in a row "
            f"(first: {self.dataset_dicts[self.index_at(position)].get('file_name')})"
        )


class _Positions(torchdata.Sampler):
    """The stream positions of this process: the ``replay`` ones first, then from item ``start``."""

    def __init__(self, replay: List[int], start: int, rank: int, world_size: int):
        self.replay, self.start, self.rank, self.world_size = list(replay), start, rank, world_size

    def __iter__(self):
        yield from self.replay
        item = self.start
        while True:
            yield item * self.world_size + self.rank
            item += 1


def _first(batch):
    return batch


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts) with ``state_dict`` / ``load_state_dict``.

    Args:
        dataset_dicts: the training dataset (list of Detectron2 dataset dicts).
        mapper: dataset dict -> model input dict (may return None to skip an item).
        batch_size: images per batch in this process.
        aspect_ratio_grouping: batch landscape and portrait images separately (Detectron2's
            ``DATALOADER.ASPECT_RATIO_GROUPING``), using the mapped dicts' "width" / "height".
        num_workers: data-loading processes (0: map in the main process).
        seed: the stream's seed; every process of a run must use the same.
    """

    def __init__(self, dataset_dicts, mapper, batch_size, *, aspect_ratio_grouping=True, num_workers=0, seed=0):
        if len(dataset_dicts) == 0:
            raise ValueError("The training dataset is empty.")
        self.dataset = _MappedStream(dataset_dicts, mapper, seed)
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self._next_item = 0  # the next item of this process to pull from the stream
        self._buckets: List[List[int]] = [[], []]  # stream positions waiting for a batch

    @property
    def seed(self):
        return self.dataset.seed

    def state_dict(self) -> Dict:
        """Position after the batches yielded so far (= consumed by the trainer)."""
        return {
            "seed": self.seed,
            "next_item": self._next_item,
            "buckets": [list(b) for b in self._buckets],
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Dict) -> None:
        """Continue from ``state``; takes effect when iteration (re)starts."""
        self.dataset.seed = int(state["seed"])
        self.dataset._epoch = (None, None)
        self._next_item = int(state["next_item"])
        self._buckets = [list(b) for b in state["buckets"]]
        saved_world_size = int(state["world_size"])
        if saved_world_size != self.world_size or self.rank != 0:
            # Only the main process's state is saved: the others continue from the same item
            # count of their own share of the stream, without partial buckets of their own.
            self._buckets = [[], []]
        if self.rank == 0 and (self.world_size > 1 or saved_world_size != self.world_size):
            logger.warning(
                "Resuming the data stream with %d processes (saved with %d): the data order is "
                "exact for the main process only.", self.world_size, saved_world_size
            )

    def _bucket_of(self, mapped: Dict) -> int:
        if not self.aspect_ratio_grouping:
            return 0
        return 0 if mapped["width"] > mapped["height"] else 1

    def __iter__(self):
        # Held items are mapped again (identically) before the stream goes on.
        replay = [p for bucket in self._buckets for p in bucket]
        pending = len(replay)
        sampler = _Positions(replay, self._next_item, self.rank, self.world_size)
        loader = torchdata.DataLoader(
            self.dataset,
            sampler=sampler,
            batch_size=None,
            collate_fn=_first,
            num_workers=self.num_workers,
            # Its own generator: creating the iterator must not draw from the global one, which
            # the training uses (and restores on resume).
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False,
        )
        buckets: List[List] = [[], []]
        for position, mapped in loader:
            if pending:
                pending -= 1
            else:
                self._next_item += 1
            bucket = buckets[self._bucket_of(mapped)]
            bucket.append((position, mapped))
            self._buckets = [[p for p, _ in b] for b in buckets]
            if len(bucket) == self.batch_size:
                batch = [m for _, m in bucket]
                del bucket[:]
                self._buckets = [[p for p, _ in b] for b in buckets]
                yield batch


def build_resumable_train_loader(cfg, mapper, dataset_dicts):
    """:class:`ResumableTrainLoader` with the config's batch size, grouping, workers and seed
    (``SEED``; a negative seed draws one, shared by all processes, as Detectron2 does)."""
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world_size}).")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    return ResumableTrainLoader(
        dataset_dicts,
        mapper,
        total // world_size,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=seed,
    )
