"""Multi-process launcher with Detectron2's ``launch()`` interface that also works without GPUs.

Detectron2 v0.6 always initialises NCCL, so ``--num-gpus 2`` cannot run on a CPU-only machine.
This launcher uses NCCL when CUDA is available and GLOO otherwise, and sets up Detectron2's
per-machine process group for both the v0.6 and the current ``detectron2.utils.comm`` API.
"""
import gc
import logging
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["DEFAULT_TIMEOUT", "launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


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

    has_gpu = torch.cuda.is_available()
    if has_gpu and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"--num-gpus {num_gpus_per_machine} was requested but only "
            f"{torch.cuda.device_count()} GPU(s) are visible."
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        backend="NCCL" if has_gpu else "GLOO",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    _create_local_process_group(comm, world_size, num_gpus_per_machine, machine_rank)
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)
    comm.synchronize()
    _shut_down_process_groups(comm)


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


def _create_local_process_group(comm, world_size, num_workers_per_machine, machine_rank):
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    # Detectron2 v0.6 keeps the group in a module global; every rank must create every group.
    for machine in range(world_size // num_workers_per_machine):
        ranks = list(range(machine * num_workers_per_machine, (machine + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
