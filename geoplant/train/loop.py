"""The training loop: :func:`fit` (AdamW + warmup/cosine, AMP, checkpoints, early stopping,
DDP) and :func:`predict`.

:func:`fit` is a sequence of named steps sharing one :class:`_Run` (what is set up once)
and one :class:`_Progress` (what a checkpoint restores)::

    _set_up -> _resume -> _wrap_for_ddp -> _compile -> per epoch: _train_one_epoch
    (micro-batches: _forward_backward; per optimizer step: _optimizer_step) -> _validate
    -> _track_best -> _summarise -> _write_checkpoint -> _asked_to_stop / _patience_exhausted
    -> _finish

The order of these steps is the order of RNG draws and collectives; keep it when editing,
or a resumed run stops matching an uninterrupted one (and DDP ranks deadlock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from geoplant.errors import GeoplantError
from geoplant.train.checkpoint import (
    CHECKPOINT_VERSION,
    capture_rng_state,
    check_model_fits,
    check_resume_settings,
    discard_checkpoints,
    load_checkpoint,
    restore_rng_state,
    resume_settings,
    save_checkpoint,
)
from geoplant.train.device import (
    AmpSettings,
    accumulator_dtype,
    amp_settings,
    gpu_utilization,
    peak_memory_mb,
    seed_everything,
    select_device,
    to_device,
)
from geoplant.train.distributed import (
    all_reduce,
    all_reduce_tensor,
    init_distributed,
    set_epoch,
    shard_loader,
    unwrap,
)
from geoplant.train.losses import LossFn, make_loss
from geoplant.train.progress import bar, iterate, say
from geoplant.train.validation import METRICS, is_better, monitored_value, validation_metrics

__all__ = ["EpochLog", "TrainConfig", "TrainResult", "fit", "predict"]

# The package's name, not this module's: log records keep the logger they had before
# geoplant.train became a package.
log = logging.getLogger("geoplant.train")


# ---------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class TrainConfig:
    """Settings of :func:`fit` (all have defaults; JSON-serialisable for model cards).

    Attributes
    ----------
    epochs
        Maximum number of epochs.
    lr, weight_decay, betas
        AdamW (decoupled weight decay; biases and norm parameters are not decayed).
    warmup_epochs
        Linear warmup from 0 (may be fractional), then cosine decay to ``lr * min_lr_ratio``
        at the end of ``epochs``; the schedule steps every optimizer step.
    loss, pos_weight, asl, soft_f1_weight
        See :func:`make_loss`; ``pos_weight`` from :func:`pos_weight_from_labels`.
    amp
        ``"auto"``: bf16 autocast on CUDA when supported, else fp16 with a GradScaler;
        ``"bf16"``, ``"fp16"``; ``"off"``. Always off on CPU/MPS.
    channels_last
        Convert the model and the batches' 4-d tensors to the channels-last memory layout
        (faster convolutions on recent GPUs with AMP; no effect on results).
    compile
        ``torch.compile`` the training module (after the DDP wrap): False (default), True
        (the default ``"inductor"`` backend) or a backend name (e.g. ``"eager"``). The
        first steps are slower while it compiles; checkpoints hold the plain weights.
    grad_accum_steps
        Micro-batches whose gradients are summed before each optimizer step (the effective
        batch is ``grad_accum_steps`` times the loader's, per rank). The last step of an
        epoch takes whatever micro-batches remain. Under DDP the gradients are all-reduced
        once per optimizer step (``no_sync`` on the others).
    grad_clip
        Max gradient norm (None: no clipping).
    metric
        ``"f1_topk"`` (default), ``"f1_threshold"`` or ``"loss"``: the validation value that
        picks the best epoch and drives early stopping.
    top_k, thresholds
        K of ``f1_topk``; threshold grid of ``f1_threshold`` (also reported).
    patience, min_delta
        Early stopping: stop after ``patience`` epochs without an improvement larger than
        ``min_delta`` (None: never stop early).
    restore_best
        Load the best epoch's weights into the model at the end.
    checkpoint_dir
        Where ``last.pt``, ``best.pt`` and ``log.jsonl`` go (None: nothing written).
    resume
        True (default): continue from ``checkpoint_dir/last.pt`` when it exists; a path:
        continue from that checkpoint; False: start over, **deleting** the checkpoints and
        log already in ``checkpoint_dir``. A checkpoint written with other settings (every
        field but where and how fast the run goes: ``checkpoint_dir``, ``resume``,
        ``device``, ``progress``, ``compile``, ``channels_last``,
        ``find_unused_parameters``, ``log_every``) or for another model is refused with a
        :class:`GeoplantError`.
    seed
        Seed of Python/NumPy/torch at the start (+ rank under DDP).
    device
        Force a device (default: :func:`select_device`).
    steps_per_epoch
        Needed only for loaders without ``len`` (iterable datasets).
    find_unused_parameters
        Passed to DDP.
    progress
        Show progress bars and print a one-line summary per epoch (rank 0 only); the
        summary is also logged on ``geoplant.train``.
    log_every
        Optimizer steps between readings of the running loss for the progress bar (each
        reading waits for the device).
    extra_settings
        The caller's settings a resume must match too (JSON values), e.g. batch size,
        modalities and data (:func:`geoplant.experiment.fit_torch` records them).
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    loss: str = "bce"
    pos_weight: Any = None
    asl: dict[str, float] = field(default_factory=dict)
    soft_f1_weight: float = 1.0
    amp: str = "auto"
    channels_last: bool = False
    compile: bool | str = False
    grad_accum_steps: int = 1
    grad_clip: float | None = 5.0
    metric: str = "f1_topk"
    top_k: int = 25
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    patience: int | None = 5
    min_delta: float = 0.0
    restore_best: bool = True
    checkpoint_dir: str | None = None
    resume: bool | str = True
    seed: int = 0
    device: str | None = None
    steps_per_epoch: int | None = None
    find_unused_parameters: bool = False
    progress: bool = True
    log_every: int = 50
    extra_settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (``pos_weight`` summarised)."""
        d = dataclasses.asdict(self)
        if d["pos_weight"] is not None and not isinstance(d["pos_weight"], int | float):
            d["pos_weight"] = f"<array of {np.asarray(self.pos_weight).size}>"
        d["thresholds"] = list(d["thresholds"])
        d["betas"] = list(d["betas"])
        return d


@dataclass
class EpochLog:
    """One epoch's record (also a line of ``log.jsonl``).

    ``train_loss`` and the ``val_*`` values are averaged over all ranks' samples;
    ``samples_per_s`` is the global training throughput (all ranks, slowest rank's time);
    ``peak_memory_mb`` is the epoch's peak CUDA memory allocated (largest rank) on CUDA, and
    the process's peak resident memory so far on CPU/MPS; ``gpu_utilization`` is
    ``torch.cuda.utilization()`` at the epoch's end (None off CUDA or without pynvml).
    ``metric`` is the monitored value (``TrainConfig.metric``).
    """

    epoch: int
    train_loss: float
    lr: float
    samples: int
    seconds: float
    samples_per_s: float
    peak_memory_mb: float
    val_loss: float | None = None
    val_f1_topk: float | None = None
    val_f1_threshold: float | None = None
    val_best_threshold: float | None = None
    metric: float | None = None
    improved: bool = False
    gpu_utilization: float | None = None


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The trained model (unwrapped from DDP; the best epoch's weights when
        ``restore_best``).
    history
        One :class:`EpochLog` per epoch run (including epochs before a resume).
    best_metric, best_epoch
        Best validation value and its (0-based) epoch (None without validation).
    epochs_run
        Epochs completed in total.
    stopped_early
        True when early stopping ended training.
    best_checkpoint, last_checkpoint
        Paths written (None without ``checkpoint_dir``).
    device
        The device used.
    """

    model: nn.Module
    history: list[EpochLog]
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    device: str


# ---------------------------------------------------------------------------------------------
# optimizer, schedule, loader length


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights, none on biases and 1-d (norm) parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup, then cosine down to ``min_ratio``."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _loader_len(loader: Any, override: int | None) -> int:
    if override:
        return int(override)
    try:
        return len(loader)
    except TypeError as err:
        raise GeoplantError("the training loader has no length",
                            fix="set TrainConfig.steps_per_epoch") from err


# ---------------------------------------------------------------------------------------------
# predict


@torch.no_grad()
def predict(model: nn.Module, loader: Any, *, device: str | torch.device | None = None,
            amp: str = "auto", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities of every survey in ``loader``.

    Parameters
    ----------
    model
        A model mapping batch dicts to logits (moved to ``device``; DDP and
        ``torch.compile`` wrappers unwrapped).
    loader
        Batches with ``"surveyId"`` and the model's modalities (labels not needed).
    device, amp
        As in :class:`TrainConfig` (default: :func:`select_device`, autocast on CUDA).
    progress
        Show a progress bar.

    Returns
    -------
    survey_ids : numpy.ndarray
        int64 ``(n,)`` in loader order.
    probabilities : numpy.ndarray
        float32 ``(n, n_species)``.

    Notes
    -----
    Runs in the calling process over the whole loader (under DDP, call it on rank 0 or
    give each rank its own shard and concatenate).
    """
    model = unwrap(model)
    dev = select_device(device)
    model.to(dev).eval()
    use_amp, dtype, _ = amp_settings(amp, dev)
    ids: list[Tensor] = []
    probs: list[Tensor] = []
    for batch in iterate(loader, desc="predict", enabled=progress):
        if "surveyId" not in batch:
            raise GeoplantError("batches lack 'surveyId'", fix="use geoplant.torch.SurveyDataset")
        batch = to_device(batch, dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=use_amp):
            logits = model(batch)
        # kept on the device until the end: one copy back instead of a sync per batch
        probs.append(torch.sigmoid(logits.float()))
        ids.append(batch["surveyId"])
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, getattr(model, "n_species", 0)), np.float32)
    return (torch.cat(ids).cpu().numpy().astype(np.int64),
            torch.cat(probs).cpu().numpy().astype(np.float32, copy=False))


# ---------------------------------------------------------------------------------------------
# fit: the state its steps share


@dataclass(frozen=True)
class _CheckpointFiles:
    """The files of ``TrainConfig.checkpoint_dir``."""

    folder: Path

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def log(self) -> Path:
        return self.folder / "log.jsonl"


@dataclass
class _Run:
    """What :func:`fit` sets up once: the settings, the device and process group, the model,
    loaders, optimizer, schedule, AMP scaler, loss and the checkpoint files it writes and
    reads."""

    cfg: TrainConfig
    device: torch.device
    distributed: bool
    rank: int
    world: int
    model: nn.Module  # unwrapped, on ``device``: what checkpoints hold
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int  # micro-batches (loader batches) per epoch
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: AmpSettings
    loss_fn: LossFn
    files: _CheckpointFiles | None
    train_model: nn.Module  # ``model``, or its DDP / compiled wrapper once set up
    ddp_model: nn.Module | None = None  # the DDP wrapper (``no_sync``), if any

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def show_progress(self) -> bool:
        """Bars and epoch summaries: asked for, and on rank 0 only."""
        return self.cfg.progress and self.is_main

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of the forward passes (disabled off CUDA)."""
        return torch.autocast(self.device.type, dtype=self.amp.dtype, enabled=self.amp.autocast)


@dataclass
class _Progress:
    """The bookkeeping a checkpoint restores: epochs done and early-stopping state."""

    history: list[EpochLog] = field(default_factory=list)
    start_epoch: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict[str, Tensor] | None = None  # the best epoch's weights (restore_best)


# ---------------------------------------------------------------------------------------------
# fit: the steps


def _check_config(cfg: TrainConfig) -> None:
    """Settings that would fail later, or silently do something else."""
    if cfg.metric not in METRICS:
        raise GeoplantError(f"unknown metric {cfg.metric!r}",
                            fix='use "f1_topk", "f1_threshold" or "loss"')
    if int(cfg.grad_accum_steps) < 1:
        raise GeoplantError(f"grad_accum_steps must be >= 1, got {cfg.grad_accum_steps}")
    if cfg.log_every < 1:
        raise GeoplantError(f"log_every must be >= 1, got {cfg.log_every}")


def _optimizer_steps(micro_batches: int, accum: int) -> int:
    """Optimizer steps in an epoch of ``micro_batches`` with ``accum`` per step."""
    return math.ceil(micro_batches / accum)


def _set_up(model: nn.Module, train_loader: Any, val_loader: Any, cfg: TrainConfig) -> _Run:
    """Check settings, join DDP, seed, and build the optimizer, schedule, scaler and loss.

    Seeding comes after joining the process group (each rank seeds ``seed + rank``) and
    before anything that draws random numbers. With ``resume=False`` rank 0 deletes the
    checkpoints already in ``checkpoint_dir`` (a fresh run must not mix with them).
    """
    _check_config(cfg)
    device = select_device(cfg.device)
    amp = amp_settings(cfg.amp, device)
    distributed = init_distributed(device)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    seed_everything(cfg.seed + rank)

    model = unwrap(model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if distributed:
        train_loader = shard_loader(train_loader, shuffle=True, seed=cfg.seed)
        if val_loader is not None:
            val_loader = shard_loader(val_loader, shuffle=False, seed=cfg.seed)
    steps_per_epoch = _loader_len(train_loader, cfg.steps_per_epoch)
    opt_steps = _optimizer_steps(steps_per_epoch, int(cfg.grad_accum_steps))
    total_steps = max(1, cfg.epochs * opt_steps)
    warmup = round(cfg.warmup_epochs * opt_steps)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, warmup, cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=amp.grad_scaler)
    loss_fn = make_loss(cfg.loss, pos_weight=cfg.pos_weight, asl=cfg.asl,
                        soft_f1_weight=cfg.soft_f1_weight)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    files = _CheckpointFiles(Path(cfg.checkpoint_dir)) if cfg.checkpoint_dir else None
    if files is not None and cfg.resume is False and rank == 0:
        discard_checkpoints(files.folder)
    return _Run(
        cfg=cfg, device=device, distributed=distributed, rank=rank, world=world, model=model,
        train_loader=train_loader, val_loader=val_loader, steps_per_epoch=steps_per_epoch,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp=amp, loss_fn=loss_fn,
        files=files, train_model=model)


def _resume_source(cfg: TrainConfig, files: _CheckpointFiles | None) -> Path | None:
    """The checkpoint to resume from: ``cfg.resume`` if a path, else ``last.pt`` if any."""
    if isinstance(cfg.resume, str):
        path = Path(cfg.resume)
        if not path.is_file():
            raise GeoplantError("resume checkpoint not found", path=path)
        return path
    if cfg.resume and files is not None and files.last.is_file():
        return files.last
    return None


def _resume(run: _Run) -> _Progress:
    """Load model, optimizer, schedule, scaler, bookkeeping and this rank's RNG state from
    the resume checkpoint; a fresh :class:`_Progress` when there is none.

    Refuses a checkpoint written with other settings or for another model. The best
    epoch's weights come back only with validation: without it the latest epoch is the
    best, and ``best.pt`` is merely the interrupted epoch.
    """
    source = _resume_source(run.cfg, run.files)
    if source is None:
        return _Progress()
    state = load_checkpoint(source)
    check_resume_settings(state.get("settings"), resume_settings(run.cfg.to_dict()),
                          source.parent)
    check_model_fits(run.model, state["model"], source)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    progress = _Progress(
        history=[EpochLog(**h) for h in state["history"]],
        start_epoch=int(state["epoch"]) + 1, best_metric=state["best_metric"],
        best_epoch=state["best_epoch"], bad_epochs=int(state["bad_epochs"]))
    rngs = state["rng"]
    # A run resumed on more ranks than it was saved with: the extra ranks take rank 0's.
    restore_rng_state(rngs[run.rank] if run.rank < len(rngs) else rngs[0])
    if (run.val_loader is not None and run.cfg.restore_best and run.files is not None
            and run.files.best.is_file()):
        progress.best_state = load_checkpoint(run.files.best)["model"]
    say(f"resumed from {source} at epoch {progress.start_epoch}", run.show_progress)
    return progress


def _wrap_for_ddp(run: _Run) -> nn.Module:
    """The module to train: ``run.model`` itself, or under DDP its wrapper (which
    broadcasts rank 0's weights, hence after :func:`_resume`)."""
    if not run.distributed:
        return run.model
    ddp_kwargs: dict[str, Any] = {"find_unused_parameters": run.cfg.find_unused_parameters}
    if run.device.type == "cuda":
        ddp_kwargs["device_ids"] = [run.device.index]
    run.ddp_model = nn.parallel.DistributedDataParallel(run.model, **ddp_kwargs)
    return run.ddp_model


def _compile(run: _Run, module: nn.Module) -> nn.Module:
    """``module`` under ``torch.compile`` when ``TrainConfig.compile`` asks (DDP first, so
    compiled graphs break at its all-reduce buckets as torch recommends)."""
    if not run.cfg.compile:
        return module
    backend = run.cfg.compile if isinstance(run.cfg.compile, str) else "inductor"
    return torch.compile(module, backend=backend)  # type: ignore[return-value]


def _forward_backward(run: _Run, batch: Any, divisor: int) -> tuple[Tensor, int]:
    """Forward and backward of one micro-batch (gradients added to ``.grad``): its loss
    (detached, on the device: no sync) and number of surveys."""
    batch = to_device(batch, run.device, channels_last=run.cfg.channels_last)
    if "labels" not in batch:
        raise GeoplantError("training batches lack 'labels'", fix="use a train split (pa_train)")
    labels = batch["labels"].float()
    with run.autocast():
        logits = run.train_model(batch)
    loss = run.loss_fn(logits.float(), labels)
    run.scaler.scale(loss / divisor).backward()
    return loss.detach(), int(labels.shape[0])


def _optimizer_step(run: _Run, nonfinite: Tensor, where: str) -> None:
    """Clip, check and step: a non-finite loss (or, without a GradScaler, gradient norm)
    raises *before* ``optimizer.step``, so the weights stay as they were.

    Reading the flag is the step's one host-device sync. Under DDP it is all-reduced first
    so that every rank stops together instead of the others waiting forever in the next
    collective. With fp16 an infinite gradient is routine (the scaler skips that step and
    lowers its scale); a non-finite loss is not.
    """
    cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
    flag = nonfinite.float()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        if not scaler.is_enabled():
            flag = torch.maximum(flag, (~torch.isfinite(norm)).float())
    if run.distributed:
        flag = all_reduce_tensor(flag, op="max")
    if flag.item():
        optimizer.zero_grad(set_to_none=True)
        raise GeoplantError(f"the loss or its gradients are not finite at {where}; the "
                            "weights were left as before that step",
                            fix="lower lr, check the inputs for NaN, or use amp='off'")
    scaler.step(optimizer)
    scaler.update()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _no_sync(run: _Run, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` for a micro-batch whose gradients are not all-reduced yet."""
    if sync or run.ddp_model is None:
        return contextlib.nullcontext()
    return run.ddp_model.no_sync()  # type: ignore[operator]


def _train_one_epoch(run: _Run, epoch: int) -> EpochLog:
    """Train over ``steps_per_epoch`` micro-batches, stepping the optimizer every
    ``grad_accum_steps``; the epoch's log (loss all-reduced, timing and memory of the
    slowest / largest rank) without validation values yet.

    The loss sum stays on the device; the host reads it every ``log_every`` optimizer steps
    (progress bar) and at the end.
    """
    device, cfg = run.device, run.cfg
    accum, steps = int(cfg.grad_accum_steps), run.steps_per_epoch
    set_epoch(run.train_loader, epoch)
    run.train_model.train()
    run.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=accumulator_dtype(device), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    n_samples, done = 0, 0
    progress = bar(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   enabled=run.show_progress)
    pending = False
    for step, batch in enumerate(itertools.islice(run.train_loader, steps)):
        group_start = step - step % accum
        last_of_group = step == min(group_start + accum, steps) - 1
        with _no_sync(run, last_of_group):
            loss, b = _forward_backward(run, batch, min(accum, steps - group_start))
        nonfinite |= ~torch.isfinite(loss)
        loss_sum += loss.to(loss_sum.dtype) * b
        n_samples += b
        pending = not last_of_group
        if last_of_group:
            _optimizer_step(run, nonfinite, f"epoch {epoch} step {step}")
            nonfinite = torch.zeros_like(nonfinite)
            done += 1
            if run.show_progress and done % cfg.log_every == 0:
                progress.set_postfix(loss=f"{float(loss_sum) / max(n_samples, 1):.4f}")
        progress.update(1)
    if pending:  # a loader shorter than steps_per_epoch: step on what was accumulated
        _optimizer_step(run, nonfinite, f"epoch {epoch} end")
    progress.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    loss_total, n_all = all_reduce([float(loss_sum), float(n_samples)], device)
    rec = EpochLog(epoch=epoch, train_loss=loss_total / max(n_all, 1),
                   lr=float(run.optimizer.param_groups[0]["lr"]), samples=int(n_all),
                   seconds=seconds, samples_per_s=n_all / max(seconds, 1e-9),
                   peak_memory_mb=peak_memory_mb(device),
                   gpu_utilization=gpu_utilization(device))
    if run.distributed:  # the slowest rank's time; the largest rank's memory
        rec.seconds, rec.peak_memory_mb = all_reduce([seconds, rec.peak_memory_mb], device,
                                                     op="max")
        rec.samples_per_s = n_all / max(rec.seconds, 1e-9)
    return rec


def _validate(run: _Run, rec: EpochLog) -> float:
    """Fill ``rec``'s ``val_*`` values from the validation loader; the monitored value."""
    metrics = validation_metrics(run.train_model, run.val_loader, run.loss_fn, run.device,
                                 run.autocast, top_k=run.cfg.top_k,
                                 thresholds=run.cfg.thresholds,
                                 channels_last=run.cfg.channels_last,
                                 progress=run.show_progress)
    for k, v in metrics.items():
        setattr(rec, k, v)
    rec.metric = monitored_value(metrics, run.cfg.metric)
    return rec.metric


def _track_best(run: _Run, progress: _Progress, rec: EpochLog, value: float) -> None:
    """Early-stopping bookkeeping: mark ``rec.improved``; keep the best epoch (and its
    weights with ``restore_best``) or count one more epoch without improvement."""
    cfg = run.cfg
    rec.improved = is_better(value, progress.best_metric, cfg.metric, cfg.min_delta)
    if rec.improved:
        progress.best_metric, progress.best_epoch, progress.bad_epochs = value, rec.epoch, 0
        if cfg.restore_best:
            progress.best_state = {k: v.detach().clone().cpu()
                                   for k, v in run.model.state_dict().items()}
    else:
        progress.bad_epochs += 1


def epoch_summary(rec: EpochLog, epochs: int, metric: str) -> str:
    """One line per epoch: losses, the monitored metric (``*`` when it improved), lr,
    throughput and time."""
    parts = [f"epoch {rec.epoch + 1}/{epochs}", f"train_loss {rec.train_loss:.4f}"]
    if rec.val_loss is not None:
        parts.append(f"val_loss {rec.val_loss:.4f}")
    if rec.metric is not None and metric != "loss":
        parts.append(f"val_{metric} {rec.metric:.4f}")
    if rec.improved:
        parts[-1] += " *"
    parts += [f"lr {rec.lr:.2e}", f"{rec.samples_per_s:,.0f} samples/s", f"{rec.seconds:.1f} s"]
    return "  ".join(parts)


def _write_checkpoint(run: _Run, progress: _Progress, rec: EpochLog) -> None:
    """Gather every rank's RNG state (a collective: all ranks call this), then on rank 0
    write ``best.pt`` (if improved, or always without validation), ``last.pt`` and a line
    of ``log.jsonl``."""
    rngs = [capture_rng_state()]
    if run.distributed:
        gathered: list[Any] = [None] * run.world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if run.files is None or not run.is_main:
        return
    config = run.cfg.to_dict()
    state = {
        "version": CHECKPOINT_VERSION, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "epoch": rec.epoch,
        "best_metric": progress.best_metric, "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs,
        "history": [dataclasses.asdict(h) for h in progress.history], "rng": rngs,
        "config": config, "settings": resume_settings(config), "world_size": run.world,
    }
    if rec.improved or run.val_loader is None:
        save_checkpoint(state, run.files.best)
    save_checkpoint(state, run.files.last)
    with open(run.files.log, "a") as fh:
        fh.write(json.dumps(dataclasses.asdict(rec)) + "\n")


def _asked_to_stop(run: _Run, rec: EpochLog,
                   on_epoch_end: Callable[[EpochLog], bool | None] | None) -> bool:
    """Call ``on_epoch_end``; True when any rank's call asked to stop."""
    stop = bool(on_epoch_end(rec)) if on_epoch_end is not None else False
    return all_reduce([float(stop)], run.device, op="max")[0] > 0


def _patience_exhausted(run: _Run, progress: _Progress) -> bool:
    """``patience`` epochs in a row without improvement (never without validation)."""
    patience = run.cfg.patience
    return run.val_loader is not None and patience is not None and progress.bad_epochs >= patience


def _finish(run: _Run, progress: _Progress, stopped_early: bool) -> TrainResult:
    """Restore the best weights, align buffers across ranks, and report."""
    model = run.model
    if run.cfg.restore_best and progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    if run.distributed:  # BatchNorm statistics drift per rank after the last step: use rank 0's
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
    if run.cfg.channels_last:  # plain layout again, for whatever uses the model next
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    files = run.files
    return TrainResult(
        model=model, history=progress.history, best_metric=progress.best_metric,
        best_epoch=progress.best_epoch, epochs_run=len(progress.history),
        stopped_early=stopped_early,
        best_checkpoint=files.best if files is not None and files.best.is_file() else None,
        last_checkpoint=files.last if files is not None and files.last.is_file() else None,
        device=str(run.device))


# ---------------------------------------------------------------------------------------------
# fit


def fit(model: nn.Module, train_loader: Any, val_loader: Any = None,
        config: TrainConfig | None = None, *,
        on_epoch_end: Callable[[EpochLog], bool | None] | None = None) -> TrainResult:
    """Train ``model`` on batch dicts; validate, checkpoint, stop early, resume.

    Parameters
    ----------
    model
        Maps a batch dict to logits ``(B, n_species)`` (e.g. :class:`MultimodalSDM`).
        Build it after :func:`seed_everything` for reproducible initial weights.
    train_loader
        Iterable of batch dicts with ``"labels"``; a :class:`~torch.utils.data.DataLoader`
        is sharded automatically under DDP.
    val_loader
        Validation batches (with ``"labels"``); None: no validation, no early stopping.
    config
        :class:`TrainConfig` (defaults if None).
    on_epoch_end
        Called (on every rank) with each epoch's log after the checkpoint is written;
        returning True stops training (all ranks stop if any asks).

    Returns
    -------
    TrainResult

    Raises
    ------
    GeoplantError
        Bad settings, a loader without labels, a non-finite loss, an unreadable
        checkpoint or one written with other settings or for another model.
    """
    run = _set_up(model, train_loader, val_loader, config or TrainConfig())
    progress = _resume(run)
    run.train_model = _compile(run, _wrap_for_ddp(run))

    stopped_early = False
    for epoch in range(progress.start_epoch, run.cfg.epochs):
        if progress.history and _patience_exhausted(run, progress):  # resumed after stopping
            stopped_early = True
            break
        rec = _train_one_epoch(run, epoch)
        if run.val_loader is not None:
            _track_best(run, progress, rec, _validate(run, rec))
        else:  # nothing to compare: the latest epoch is the best
            progress.best_epoch = epoch
        progress.history.append(rec)
        if run.is_main:
            log.debug("epoch %d: %s", epoch, json.dumps(
                {k: v for k, v in dataclasses.asdict(rec).items() if v is not None}))
            say(epoch_summary(rec, run.cfg.epochs, run.cfg.metric), run.show_progress)
        _write_checkpoint(run, progress, rec)
        if run.distributed:
            dist.barrier()
        if _asked_to_stop(run, rec, on_epoch_end):
            break
        if _patience_exhausted(run, progress):
            stopped_early = True
            if run.is_main:
                say(f"early stopping at epoch {epoch + 1} (best {progress.best_metric:.4f} at "
                    f"epoch {(progress.best_epoch or 0) + 1})", run.show_progress)
            break
    return _finish(run, progress, stopped_early)
