"""Several training processes on PyTorch's own engine: torchrun + DistributedDataParallel (DDP).

``torchrun --nproc_per_node N -m qlearn pipeline ... --distributed`` starts N copies of the pipeline;
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and ``init`` joins them into
one process group: gloo on CPU, NCCL with ``--device cuda`` (process ``LOCAL_RANK`` on GPU
``LOCAL_RANK``). Several machines: the same command on each, with torchrun's rendezvous options
(``--nnodes``, ``--node_rank`` or ``--rdzv_backend c10d --rdzv_endpoint HOST:PORT``).

What keeps N processes equivalent to one process with the same global batch B:

* data: ``ShardSampler`` cuts each epoch's order -- the same seeded permutation ``qlearn.train.train``
  uses -- into global batches of B; process r takes every N-th image of it, B/N per step, and DDP
  averages the gradients, so every process applies the same update to the same weights;
* float training: BatchNorm normalises with each process's own B/N images (per-replica batch
  statistics, as in the paper's multi-replica TensorFlow training) on CPU, where PyTorch's
  SyncBatchNorm does not run; on CUDA it is converted to SyncBatchNorm. The running averages are
  averaged over the processes after every epoch (``average_buffers``), so all processes hold the
  same model;
* QAT: ``StatSync`` is installed into qlearn.qat, which then all-reduces inside the forward pass --
  the EMA activation ranges see the global batch's min (MIN over processes) and max (MAX), and the
  folded batch norm's batch mean and variance are those of the global batch (sums all-reduced, with
  gradients); so the ranges, the BN statistics and the folded weights are identical on every
  process at every step, and so is the converted integer model (the pipeline checks its sha256).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from qlearn._checks import check_int, check_seed

__all__ = ["World", "SINGLE", "init", "shutdown", "ShardSampler", "average_buffers", "StatSync",
           "broadcast_error", "all_reduce_sum", "gather_strings", "integer_model_sha256"]

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` in [0, size), ``local_rank`` on its machine, the backend."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


SINGLE = World()


def init(device: str) -> World:
    """Join the process group torchrun prepared (gloo on CPU, NCCL on CUDA); returns this ``World``.

    Raises ValueError when the torchrun variables are missing (the command was not started by torchrun).
    """
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"--distributed needs torchrun (missing {', '.join(missing)}): "
                         "run `torchrun --nproc_per_node N -m qlearn pipeline ... --distributed`")
    rank, size, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)  # one GPU per process: process LOCAL_RANK on GPU LOCAL_RANK
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return World(rank, size, local, backend)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """This process's share of each epoch: the seeded order of ``qlearn.train.train``, round-robin.

    Epoch e's order is randperm(n) from a generator seeded with seed * 100003 + e (as ``train``),
    padded by wrapping around to a multiple of ``size``; process ``rank`` takes positions rank,
    rank + size, ... A DataLoader with batch size B/size then gives, at step k, every process its
    part of the k-th global batch of B images. With size 1 it is exactly ``train``'s order.
    """

    def __init__(self, n: int, world: World = SINGLE, seed: int = 0) -> None:
        self.n = check_int(n, "n", minimum=1)
        self.world = world
        self.seed = check_seed(seed, maximum=2**63 // 100_003 - 1_000)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        return -(-self.n // self.world.size)  # ceil(n / size)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        total = len(self) * self.world.size
        order += order[: total - self.n]  # pad: every process gets the same number of images
        return iter(order[self.world.rank :: self.world.size])


def _float_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if torch.is_floating_point(b)]


@torch.no_grad()
def average_buffers(model: nn.Module, world: World) -> None:
    """Average every floating-point buffer (BN running mean/var, EMA ranges) over the processes.

    All processes receive the same all-reduced values, so afterwards they hold identical buffers.
    """
    if not world.distributed:
        return
    for b in _float_buffers(model):
        dist.all_reduce(b, op=dist.ReduceOp.SUM)
        b.div_(world.size)


def all_reduce_sum(values: list[float], world: World, device: torch.device | str = "cpu") -> list[float]:
    """Sum a few float64 numbers over the processes (per-epoch loss and accuracy counts)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


class StatSync:
    """What qlearn.qat calls to make its batch statistics those of the global batch.

    ``minmax(lo, hi)``: (MIN over processes of lo, MAX of hi) -- the global batch's range (Eq. 55's input).
    ``sums(t)``: the sum over processes of a tensor of per-channel sums, differentiable (the gradient
    of a sum all-reduce is the all-reduced gradient), for the folded BN's batch mean and variance.
    """

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def size(self) -> int:
        """Processes: each holds the same number of images per step (``ShardSampler`` pads to equal shares)."""
        return self.world.size

    @torch.no_grad()
    def minmax(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.stack([-lo, hi])  # one message: max(-lo) = -min(lo)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return -both[0], both[1]

    def sums(self, t: torch.Tensor) -> torch.Tensor:
        import warnings

        from torch.distributed.nn.functional import all_reduce  # differentiable (the functional API is not)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "deprecated" in favour of a non-differentiable one
            return all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_error(message: str | None, world: World) -> str | None:
    """Rank 0's error message (or None) on every process, so a bad --out stops them all at once."""
    if not world.distributed:
        return message
    box: list[Any] = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_strings(value: str, world: World) -> list[str]:
    """``value`` of every process, in rank order."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return [str(v) for v in out]


def integer_model_sha256(model: Any) -> str:
    """sha256 of everything an ``IntegerModel`` computes with: every layer's fields (int8 weights, int32
    biases, multipliers, shifts, zero points, scales -- arrays by dtype, shape and bytes) and the
    input/output quantization parameters. Equal hashes: the same integer model, bit for bit."""
    import dataclasses

    import numpy as np

    h = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, (np.ndarray, np.generic)):
            a = np.ascontiguousarray(value)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(value, torch.Tensor):
            add(value.detach().cpu().numpy())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            h.update(type(value).__name__.encode())
            for f in dataclasses.fields(value):
                h.update(f.name.encode())
                add(getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                add(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    add(list(model.layers))
    add(model.input_qparams)
    add(model.output_qparams)
    return h.hexdigest()
