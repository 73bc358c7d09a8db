"""Multi-process launcher with Detectron2's ``launch()`` interface that also works without GPUs.

Detectron2 v0.6 always initialises NCCL, so ``--num-gpus 2`` cannot run on a CPU-only machine.
This launcher uses NCCL when CUDA is available and GLOO otherwise, and sets up Detectron2's
per-machine process group for both the v0.6 and the current ``detectron2.utils.comm`` API.
"""
import gc
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["DEFAULT_TIMEOUT", "launch"]

# How long a collective operation (and the initial rendezvous) waits for the other processes
# before failing instead of hanging; MASK2FORMER_DIST_TIMEOUT_S overrides it (seconds).
DEFAULT_TIMEOUT = timedelta(seconds=float(os.environ.get("MASK2FORMER_DIST_TIMEOUT_S", 30 * 60)))


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``.

    On a machine without GPUs, ``num_gpus_per_machine`` is the number of CPU worker processes.
    ``dist_url="auto"`` picks a free local port (single machine only).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError('dist_url="auto" only works on one machine; give tcp://HOST:PORT instead.')
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if dist_url is None:
        raise ValueError("dist_url is required when launching more than one process.")
    if num_machines > 1 and dist_url.startswith("file://"):
        logging.getLogger(__name__).warning(
            "file:// is not a reliable init method for several machines; prefer tcp://"
        )
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _distributed_worker(
    local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout
):
    from detectron2.utils import comm

    use_gpu = torch.cuda.is_available()
    if use_gpu and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"--num-gpus {num_gpus_per_machine} was requested but only "
            f"{torch.cuda.device_count()} GPU(s) are visible."
        )
    # Machines are numbered first: the workers of machine m hold ranks m*G ... m*G + G-1.
    rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        backend="NCCL" if use_gpu else "GLOO", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    comm_name = f"rank {rank} of {world_size} (machine {machine_rank}, worker {local_rank}; {dist_url})"
    try:
        _join_machine_group(comm, num_gpus_per_machine, machine_rank)
        if use_gpu:
            torch.cuda.set_device(local_rank)
        comm.synchronize()
        main_func(*args)
        comm.synchronize()
    except RuntimeError as error:
        if not _is_communication_failure(error):
            raise
        raise RuntimeError(
            f"Training process {comm_name} lost contact with the other processes: another process or "
            f"machine stopped (see its log for why), or the network between them failed. Every process "
            f"stops when one does; restart all of them (--resume continues from the last checkpoint). "
            f"Collectives wait at most {timeout} (MASK2FORMER_DIST_TIMEOUT_S). Cause: {error}"
        ) from error
    _shut_down_process_groups(comm)


def _is_communication_failure(error):
    """Whether `error` comes from the process group (a peer vanished, a collective timed out)."""
    dist_error = getattr(dist, "DistError", ())
    if dist_error and isinstance(error, dist_error):
        return True
    message = str(error).lower()
    return any(word in message for word in ("gloo", "nccl", "connection reset", "connection closed", "timed out"))


def _shut_down_process_groups(comm):
    """Destroy every process group while the interpreter is still fully alive.

    A GLOO group that is still referenced when the interpreter finalises is destroyed during
    C++ teardown, which aborts the worker about one run in ten ("terminate called without an
    active exception"). ``destroy_process_group`` alone is not enough: Detectron2's ``comm``
    keeps its own references (the local group, the cached global GLOO group).
    """
    dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
    if hasattr(comm, "_get_global_gloo_group"):
        comm._get_global_gloo_group.cache_clear()
    gc.collect()


def _join_machine_group(comm, workers_per_machine, machine_rank):
    """Give Detectron2's ``comm`` the group of this machine's workers (its local rank and size)."""
    if hasattr(comm, "create_local_process_group"):
        # Newer Detectron2 builds the per-machine groups itself.
        comm.create_local_process_group(workers_per_machine)
        return
    # Detectron2 v0.6 reads the group from a module global. new_group() is collective: every
    # process creates every machine's group, in the same order, and keeps its own.
    num_machines = dist.get_world_size() // workers_per_machine
    for machine in range(num_machines):
        first = machine * workers_per_machine
        group = dist.new_group(list(range(first, first + workers_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
