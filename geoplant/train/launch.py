"""Run a training function on N processes (torchrun) from inside one process.

A notebook kernel (papermill, Jupyter, Kaggle) is one process that cannot itself be started
by ``torchrun``; :func:`spawn` starts the workers from it::

    spawn("geoplant.experiment:train_worker", job_dir, nproc=2)

runs ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m
geoplant.train.launch geoplant.experiment:train_worker JOB_DIR``. Each worker (:func:`main`)
joins the process group first (:func:`~geoplant.train.init_distributed`: Gloo on CPU,
NCCL with one GPU per process on CUDA), so that loaders and samplers built by the target
see the world size, then calls ``target(JOB_DIR)``. What the job needs and what it returns
travel as files in ``JOB_DIR``; only rank 0 should write results.

The workers' output is relayed as it comes to this process's stdout (a notebook cell shows
it); a worker's failure comes back as one :class:`~geoplant.errors.GeoplantError` carrying
the worker's own message (each worker writes it to ``JOB_DIR/error-rank<r>.txt``).
"""

from __future__ import annotations

import collections
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geoplant.errors import GeoplantError

__all__ = ["main", "spawn", "torchrun_command"]

_TAIL_CHARS = 4000


def torchrun_command(target: str, job_dir: str | os.PathLike[str], nproc: int) -> list[str]:
    """The torchrun command line :func:`spawn` runs (one node, ``nproc`` processes)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={int(nproc)}", "-m", "geoplant.train.launch", target,
            str(job_dir)]


def _worker_env(nproc: int) -> dict[str, str]:
    """The workers' environment: unbuffered output (relayed as it comes), and the CPU cores
    shared between them (torchrun would otherwise give each one thread, with a warning)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    return env


def _relay(proc: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    """Copy the workers' merged output to our stdout as it comes, keeping its tail."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 8192)
        if not chunk:
            return
        text = chunk.decode("utf-8", errors="replace")
        sys.stdout.write(text)
        sys.stdout.flush()
        tail.append(text)


def _worker_errors(job_dir: Path) -> list[str]:
    """The messages the workers left on failure, rank 0's first."""
    files = sorted(job_dir.glob("error-rank*.txt"),
                   key=lambda p: int(p.stem.removeprefix("error-rank") or 0))
    return [p.read_text().strip() for p in files if p.read_text().strip()]


def spawn(target: str, job_dir: str | os.PathLike[str], nproc: int) -> None:
    """Run ``target(job_dir)`` on ``nproc`` torchrun processes and wait for them.

    Parameters
    ----------
    target
        ``"module:function"``; the function takes the job folder.
    job_dir
        A folder holding what the job needs; results are written there by the target.
    nproc
        Processes (one per GPU on CUDA).

    Raises
    ------
    GeoplantError
        A worker failed: its own message when it left one, else the end of the output.
    """
    job = Path(job_dir)
    for stale in job.glob("error-rank*.txt"):
        stale.unlink()
    tail: collections.deque[str] = collections.deque(maxlen=64)
    proc = subprocess.Popen(torchrun_command(target, job, nproc), env=_worker_env(nproc),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _relay(proc, tail)
        code = proc.wait()
    except BaseException:  # interrupted (a notebook's stop button): take the workers down
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code == 0:
        return
    errors = _worker_errors(job)
    if errors:
        raise GeoplantError(errors[0])
    last = "".join(tail)[-_TAIL_CHARS:].strip().splitlines()
    raise GeoplantError(f"the {nproc} training processes failed (exit {code}): "
                        f"{last[-1] if last else 'no output'}",
                        fix="see the workers' output above")


def _resolve(target: str) -> Callable[[str], Any]:
    """The function named by ``"module:function"``."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise GeoplantError(f"bad target {target!r}", fix='use "module:function"')
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _one_line(err: BaseException) -> str:
    """A worker's failure as the one line the parent raises."""
    if isinstance(err, GeoplantError):
        return err.one_line()
    return f"{type(err).__name__}: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    """A torchrun worker: join the process group, run ``target(job_dir)``, leave.

    Usage: ``python -m geoplant.train.launch module:function JOB_DIR`` (under torchrun).
    """
    import torch.distributed as dist

    from geoplant.train.distributed import init_distributed

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m geoplant.train.launch module:function JOB_DIR", file=sys.stderr)
        return 2
    target, job_dir = args
    rank = int(os.environ.get("RANK", "0"))
    try:
        init_distributed()
        _resolve(target)(job_dir)
        if dist.is_initialized():
            # every rank done before gloo/NCCL is torn down: destroying while a peer still
            # talks can abort it ("terminate called without an active exception")
            dist.barrier()
    except GeoplantError as err:  # a user-facing error: its one line, no traceback
        Path(job_dir, f"error-rank{rank}.txt").write_text(_one_line(err) + "\n")
        print(f"rank {rank}: {err.one_line()}", file=sys.stderr)
        return 1
    except BaseException as err:
        Path(job_dir, f"error-rank{rank}.txt").write_text(_one_line(err) + "\n")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
