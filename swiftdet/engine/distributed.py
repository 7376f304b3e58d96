"""Several training processes: torchrun's env:// contract, a local launcher, and small collectives.

Every function works unchanged in a single process (world size 1, no process group), so the engine
calls them unconditionally.
"""
from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swiftdet.errors import SwiftdetError, TrainingProcessDiedError

__all__ = [
    "all_gather_object",
    "barrier",
    "get_rank",
    "get_world_size",
    "init_distributed_from_env",
    "is_main_process",
    "launch",
    "local_rank",
    "shutdown_distributed",
]


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def init_distributed_from_env(timeout_minutes: int = 30) -> bool:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    NCCL when CUDA is available, gloo otherwise. Returns False (and does nothing) when WORLD_SIZE is
    unset or 1, so the same command runs alone or under torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_minutes))
    return True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, errors: Any) -> None:
    # The environment torchrun would give each process, so the rest of the code has one path.
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    try:
        fn(*args)
    except SwiftdetError as error:
        # A user error is re-raised by the parent as itself, so the CLI prints it without a traceback.
        errors.put((rank, error))
        sys.exit(2)


def launch(fn: Callable[..., Any], nproc: int, args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nproc`` local processes with torchrun-like environment variables.

    ``fn`` must be importable (a module-level function). One process runs ``fn`` in place. An
    exception in any process is raised here once all have ended; a process that ended without one
    (killed) raises TrainingProcessDiedError naming its rank and signal or exit code.
    """
    if nproc <= 1:
        fn(*args)
        return
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(
            _worker, args=(nproc, _free_port(), fn, args, errors), nprocs=nproc, join=True, start_method="spawn"
        )
    except mp.ProcessExitedException as error:
        if errors.empty():
            # Ended without a Python error to show (kill -9, the OOM killer, a native crash): say which
            # process and how, rather than torch's traceback; the launcher stopped the others.
            how = (f"was killed by signal {error.signal_name}" if error.signal_name
                   else f"exited with code {error.exit_code}")
            raise TrainingProcessDiedError(
                f"process rank {error.error_index} of {nproc} (pid {error.error_pid}) {how}, so the other "
                "processes were stopped."
            ) from None
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        raise min(reported, key=lambda item: item[0])[1] from None
