"""The steps the baseline notebooks share: locate data, split, train, predict, decode, score.

Notebooks stay thin by calling these; each step is also usable from a script. A baseline's
flow is::

    store = open_store(locate_data(data))
    plan = make_plan(store)                           # spatial-block validation split
    val, test, result = fit_torch(store, plan, ["landsat"])  # or fit_classic(..., "logistic")
    decoder = choose_decoder(val)                     # tuned on validation only
    metrics = score(store, plan, test, decoder)       # vs the synthetic truth when there is one
    write_metrics(out_dir, metrics)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text, json_default
from geoplant.splits import spatial_block_split
from geoplant.store import Store

if TYPE_CHECKING:  # torch and the models load only when a step needs them
    from geoplant.models import EnvLogisticBaseline, FrequencyBaseline
    from geoplant.train import TrainResult

#: The normalisation statistics :func:`fit_torch` used, in its ``out_dir``.
NORMALIZATION_FILE = "normalization.json"

#: Key of :func:`score`'s per-survey F1 (model and oracle), written to :data:`PER_SURVEY_FILE`.
PER_SURVEY_KEY = "test_per_survey"
PER_SURVEY_FILE = "per_survey.csv"

#: Where Kaggle mounts attached datasets.
KAGGLE_INPUT = Path(os.environ.get("GEOPLANT_KAGGLE_INPUT", "/kaggle/input"))


def on_kaggle() -> bool:
    """True inside a Kaggle kernel."""
    return KAGGLE_INPUT.is_dir() or "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def locate_data(data: str | None, modalities: Sequence[str] | None = None) -> str:
    """The store to use: ``data`` if given, else what is attached on Kaggle: an attached
    store, or the attached raw release built once into ``/kaggle/working`` for
    ``modalities`` (see :func:`geoplant.kaggle.attached.resolve_data`)."""
    from geoplant.kaggle.attached import resolve_data

    return resolve_data(data, modalities=modalities)


@dataclass(frozen=True)
class Plan:
    """Survey ids of the training, validation and test parts."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    test_split: str
    test_ids: np.ndarray


def evaluation_split(store: Store) -> str:
    """The split a baseline is scored on: the store's (first) PA test split.

    ``pa_test`` (GLC24) or ``pa_test_iid`` (GeoPlant).

    Raises
    ------
    GeoplantError
        The store holds no PA test split.
    """
    tests = [s for s in store.splits if s.startswith("pa_test")]
    if not tests:
        raise GeoplantError("the store has no PA test split", path=store.path,
                            fix="build it with the test split (geoplant build --splits ...)")
    return tests[0]


def make_plan(store: Store, *, val_fraction: float = 0.15, block_km: float = 10.0,
              seed: int = 0, test_split: str | None = None) -> Plan:
    """Split ``pa_train`` into training and validation by ~10 km spatial blocks.

    Parameters
    ----------
    store
        The store to plan on.
    val_fraction, block_km, seed
        As in :func:`geoplant.splits.spatial_block_split`.
    test_split
        The split to predict and score (default: :func:`evaluation_split`).

    Returns
    -------
    Plan
    """
    surveys = store.records("pa_train", columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").sort_values("surveyId")
    val = spatial_block_split(surveys["lon"].to_numpy(), surveys["lat"].to_numpy(),
                              block_km=block_km, val_fraction=val_fraction, seed=seed)
    ids = surveys["surveyId"].to_numpy(np.int64)
    split = test_split or evaluation_split(store)
    test_ids = np.unique(store.records(split, columns=["surveyId"])["surveyId"]
                         .to_numpy(np.int64))
    return Plan(ids[~val], ids[val], split, test_ids)


@dataclass
class Predictions:
    """Probabilities over the store's species (columns: ``species_ids``)."""

    survey_ids: np.ndarray
    probs: np.ndarray
    species_ids: np.ndarray
    labels: sp.csr_matrix | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _labels_for(store: Store, survey_ids: np.ndarray) -> sp.csr_matrix:
    labels = store.labels("pa_train")
    rows = np.searchsorted(labels.survey_ids, survey_ids)
    return labels.matrix[rows]


def _frequency(store: Store, ids: np.ndarray) -> np.ndarray:
    labels = _labels_for(store, ids)
    return np.asarray(labels.mean(axis=0)).ravel()


@dataclass(frozen=True)
class TorchJob:
    """The settings of :func:`fit_torch` (JSON values): all a training process needs besides
    the store, the plan and the normalisation statistics. See :func:`fit_torch`."""

    modalities: tuple[str, ...]
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    loss: str = "bce"
    seed: int = 0
    num_workers: int = 0
    patience: int | None = 4
    encoder_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: str | None = "random"
    amp: str = "auto"
    channels_last: bool = False
    torch_compile: bool | str = False
    grad_accum_steps: int = 1
    checkpoint_dir: str | None = None
    fresh: bool = False
    progress: bool = True
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (for a worker's job file)."""
        return {**dataclasses.asdict(self), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TorchJob:
        """The job :meth:`to_dict` described."""
        return cls(**{**d, "modalities": tuple(d["modalities"])})


def _ids_sha256(ids: np.ndarray) -> str:
    """sha256 of the sorted unique survey ids as little-endian int64 (as
    :func:`geoplant.stats.compute_normalization_stats` records a subset)."""
    return hashlib.sha256(np.ascontiguousarray(np.unique(np.asarray(ids, np.int64)), "<i8")
                          .tobytes()).hexdigest()


def training_stats(store: Store, plan: Plan, modalities: list[str] | tuple[str, ...],
                   out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Normalisation statistics of the plan's *training* surveys (the validation blocks must
    not leak into them), kept in ``out_dir/normalization.json``.

    The file is reused when it describes the same surveys and modalities; it is also what
    a later prediction on new data must normalise with.

    Parameters
    ----------
    store, plan, modalities
        What to describe: ``plan.train_ids`` of ``pa_train``.
    out_dir
        Where to keep the file (None: computed every time, not written).

    Returns
    -------
    dict
        As :func:`geoplant.stats.compute_normalization_stats` returns.
    """
    from geoplant.stats import compute_normalization_stats

    path = Path(out_dir) / NORMALIZATION_FILE if out_dir is not None else None
    key = _ids_sha256(plan.train_ids)
    if path is not None and path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("survey_ids_sha256") == key and set(modalities) <= set(
                cached.get("modalities", {})):
            return cached
    stats = compute_normalization_stats(store, "pa_train", list(modalities),
                                        survey_ids=plan.train_ids, write=False)
    if path is not None:
        atomic_write_text(path, json.dumps(stats, indent=1) + "\n")
    return stats


def _encoder_kwargs(job: TorchJob) -> dict[str, dict[str, Any]]:
    """Per-modality encoder arguments: the job's, with the Sentinel-2 weights it names."""
    kwargs = {m: dict(v) for m, v in job.encoder_kwargs.items()}
    if "sentinel2" in job.modalities:
        kwargs.setdefault("sentinel2", {}).setdefault("weights", job.weights)
    return kwargs


def _build_model(store: Store, plan: Plan, job: TorchJob, stats: Mapping[str, Any]) -> Any:
    """The :class:`~geoplant.models.MultimodalSDM` of ``job`` (seed first for the same
    initial weights everywhere), normalising its inputs on the device with ``stats``
    (:class:`~geoplant.torch.DeviceNormalizer`: saved with its weights)."""
    from geoplant.models import MultimodalSDM
    from geoplant.torch import DeviceNormalizer

    model = MultimodalSDM(list(job.modalities), len(store.species),
                          encoder_kwargs=_encoder_kwargs(job),
                          prior=_frequency(store, plan.train_ids),
                          normalizer=DeviceNormalizer.from_stats(stats, job.modalities))
    if job.init_from is not None:  # e.g. the env encoder pre-trained on PO records
        from geoplant.presence_only import load_pretrained

        load_pretrained(model, job.init_from)
    return model


def _datasets(store: Store, plan: Plan, modalities: list[str] | tuple[str, ...],
              stats: Mapping[str, Any], parts: tuple[str, ...]) -> list[Any]:
    """The plan's ``"train"``, ``"val"`` or ``"test"`` surveys as datasets in stored dtypes
    (Sentinel-2 uint8: a quarter of the bytes through workers and to the device); the
    model's normaliser standardises them with ``stats`` on the device."""
    from geoplant.torch import SurveyDataset

    where = {"train": ("pa_train", plan.train_ids), "val": ("pa_train", plan.val_ids),
             "test": (plan.test_split, plan.test_ids)}
    return [SurveyDataset(store, where[p][0], list(modalities), normalize=False,
                          stats=dict(stats), survey_ids=where[p][1]) for p in parts]


def weights_sources(model: Any) -> dict[str, str]:
    """What initialised each encoder of a :class:`~geoplant.models.MultimodalSDM`:
    ``"random"``, ``"imagenet"`` or a weights file (for metrics and model cards)."""
    return {m: str(getattr(enc, "weights_source", "random"))
            for m, enc in model.encoders.items()}


def train_config(job: TorchJob, plan: Plan) -> Any:
    """The :class:`~geoplant.train.TrainConfig` of ``job``; its ``extra_settings`` (batch
    size, modalities, encoders, weights and the plan's surveys) must match on resume."""
    from geoplant.train import TrainConfig

    return TrainConfig(
        epochs=job.epochs, lr=job.lr, loss=job.loss, seed=job.seed, metric="f1_threshold",
        patience=job.patience, amp=job.amp, channels_last=job.channels_last,
        compile=job.torch_compile, grad_accum_steps=job.grad_accum_steps,
        checkpoint_dir=job.checkpoint_dir, resume=not job.fresh, progress=job.progress,
        extra_settings={"modalities": list(job.modalities), "batch_size": job.batch_size,
                        "encoder_kwargs": _encoder_kwargs(job),
                        "train_surveys_sha256": _ids_sha256(plan.train_ids),
                        "val_surveys_sha256": _ids_sha256(plan.val_ids),
                        **_init_settings(job)})


def _init_settings(job: TorchJob) -> dict[str, Any]:
    """What a resume must match about the initial weights: the ``init_from`` file and the
    sha256 of the weights in it (none recorded without one, so older checkpoints still
    resume)."""
    if job.init_from is None:
        return {}
    from geoplant.presence_only import pretrained_digest

    return {"init_from": str(job.init_from),
            "init_from_sha256": pretrained_digest(job.init_from)}


def _loader_kwargs(job: TorchJob, device: Any) -> dict[str, Any]:
    """DataLoader arguments: workers, and pinned memory for non-blocking copies to CUDA."""
    kwargs: dict[str, Any] = {"num_workers": job.num_workers,
                              "pin_memory": device.type == "cuda"}
    if job.num_workers:
        kwargs["persistent_workers"] = True
    return kwargs


def _train(store: Store, plan: Plan, job: TorchJob, stats: Mapping[str, Any]) -> TrainResult:
    """Build the datasets, loaders and model of ``job`` and :func:`~geoplant.train.fit` it,
    in this process (one of several under torchrun, or the only one)."""
    from geoplant.train import fit, init_distributed, seed_everything, select_device

    device = select_device()
    # before the loaders: their BlockShuffleSampler takes its shard from the process group
    init_distributed(device)
    train, val = _datasets(store, plan, job.modalities, stats, ("train", "val"))
    seed_everything(job.seed)  # fit() seeds too late: the initial weights come from here
    model = _build_model(store, plan, job, stats)
    kwargs = _loader_kwargs(job, device)
    return fit(model, train.loader(job.batch_size, shuffle=True, seed=job.seed, **kwargs),
               val.loader(job.batch_size, shuffle=False, **kwargs), train_config(job, plan))


def _check_resumable(job: TorchJob, plan: Plan) -> None:
    """Refuse, before starting workers, checkpoints written with other settings (the
    workers would refuse them too, less readably)."""
    from geoplant.train.checkpoint import check_resume_settings, load_checkpoint, resume_settings

    if job.fresh or job.checkpoint_dir is None:
        return
    last = Path(job.checkpoint_dir) / "last.pt"
    if last.is_file():
        check_resume_settings(load_checkpoint(last).get("settings"),
                              resume_settings(train_config(job, plan).to_dict()), last.parent)


def write_job(folder: str | os.PathLike[str], store: Store, plan: Plan, job: TorchJob,
              stats: Mapping[str, Any]) -> Path:
    """Write what :func:`train_worker` reads into ``folder``: ``job.json`` (store, settings,
    normalisation statistics) and ``plan.npz`` (survey ids). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"store": store.path, "storage_options": store.storage_options,
            "job": job.to_dict(), "stats": dict(stats), "test_split": plan.test_split}
    (folder / "job.json").write_text(json.dumps(spec))
    np.savez(folder / "plan.npz", train_ids=plan.train_ids, val_ids=plan.val_ids,
             test_ids=plan.test_ids)
    return folder


def read_job_result(folder: str | os.PathLike[str], store: Store, plan: Plan,
                    job: TorchJob) -> TrainResult:
    """The :class:`~geoplant.train.TrainResult` rank 0 of :func:`train_worker` left in
    ``folder``, its model rebuilt here with the trained weights."""
    import torch

    from geoplant.train import EpochLog, TrainResult, seed_everything

    folder = Path(folder)
    out = json.loads((folder / "result.json").read_text())
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    seed_everything(job.seed)
    model = _build_model(store, plan, job, json.loads((folder / "job.json").read_text())["stats"])
    model.load_state_dict(state)
    model.eval()
    ckpt = {k: Path(out[k]) if out[k] else None for k in ("best_checkpoint", "last_checkpoint")}
    return TrainResult(model=model, history=[EpochLog(**h) for h in out["history"]],
                       best_metric=out["best_metric"], best_epoch=out["best_epoch"],
                       epochs_run=out["epochs_run"], stopped_early=out["stopped_early"],
                       best_checkpoint=ckpt["best_checkpoint"],
                       last_checkpoint=ckpt["last_checkpoint"], device=out["device"])


def _fit_on_workers(store: Store, plan: Plan, job: TorchJob, stats: Mapping[str, Any],
                    nproc: int) -> TrainResult:
    """Train on ``nproc`` torchrun processes (:func:`train_worker`) started from here; the
    result rebuilt from what rank 0 wrote (weights, history)."""
    import torch

    from geoplant.train.launch import spawn

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < nproc:  # NCCL wants one GPU per process
        raise GeoplantError(f"nproc={nproc} but only {gpus} GPU(s) are visible",
                            fix=f"use nproc <= {gpus} (one process per GPU)")
    _check_resumable(job, plan)
    with tempfile.TemporaryDirectory(prefix="geoplant-ddp-") as tmp:
        write_job(tmp, store, plan, job, stats)
        spawn("geoplant.experiment:train_worker", tmp, nproc)
        return read_job_result(tmp, store, plan, job)


def train_worker(job_dir: str | os.PathLike[str]) -> None:
    """One torchrun process of ``fit_torch(nproc > 1)`` (run by
    :mod:`geoplant.train.launch` on every rank, inside the process group).

    Reads ``job.json`` and ``plan.npz`` from ``job_dir``, trains; rank 0 alone writes the
    final weights (``model.pt``) and the result (``result.json``) there.
    """
    import torch
    import torch.distributed as dist

    folder = Path(job_dir)
    spec = json.loads((folder / "job.json").read_text())
    store = Store(spec["store"], spec["storage_options"] or None)
    with np.load(folder / "plan.npz") as ids:
        plan = Plan(ids["train_ids"], ids["val_ids"], spec["test_split"], ids["test_ids"])
    result = _train(store, plan, TorchJob.from_dict(spec["job"]), spec["stats"])
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    torch.save(result.model.state_dict(), folder / "model.pt")
    out = {k: getattr(result, k) for k in ("best_metric", "best_epoch", "epochs_run",
                                           "stopped_early", "device")}
    out["history"] = [dataclasses.asdict(h) for h in result.history]
    out["best_checkpoint"] = str(result.best_checkpoint) if result.best_checkpoint else None
    out["last_checkpoint"] = str(result.last_checkpoint) if result.last_checkpoint else None
    (folder / "result.json").write_text(json.dumps(out))


def fit_torch(store: Store, plan: Plan, modalities: list[str], *, epochs: int = 6,
              batch_size: int = 64, lr: float = 1e-3, loss: str = "bce", seed: int = 0,
              num_workers: int = 0, out_dir: str | os.PathLike[str] | None = None,
              patience: int | None = 4,
              encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
              weights: str | None = "random", amp: str = "auto", channels_last: bool = False,
              torch_compile: bool | str = False, grad_accum_steps: int = 1, nproc: int = 1,
              fresh: bool = False, progress: bool = True,
              init_from: str | os.PathLike[str] | None = None,
              ) -> tuple[Predictions, Predictions, TrainResult]:
    """Train :class:`~geoplant.models.MultimodalSDM` on ``modalities``; predict val and test.

    Inputs are normalised with statistics of the plan's training surveys only
    (:func:`training_stats`, kept in ``out_dir/normalization.json``), on the device: the
    loaders ship stored dtypes and the model's :class:`~geoplant.torch.DeviceNormalizer`
    (saved with its weights) standardises them. With ``out_dir``,
    checkpoints go to ``out_dir/checkpoints`` and a rerun resumes from them, provided
    every setting that changes the result is the same (else a :class:`GeoplantError`:
    pass ``fresh=True`` or use another ``out_dir``).

    Parameters
    ----------
    store, plan, modalities
        The data, its train/validation/test surveys, the modalities to use.
    epochs, batch_size, lr, loss, seed, patience
        Training settings (see :class:`~geoplant.train.TrainConfig`); ``batch_size`` is per
        process.
    num_workers
        DataLoader worker processes (per training process).
    out_dir
        Where checkpoints and the normalisation statistics go (None: nowhere).
    encoder_kwargs
        Per-modality encoder arguments (:func:`geoplant.models.build_encoder`).
    weights
        Initial Sentinel-2 backbone weights: ``"random"`` (default: the same on every
        machine), ``"imagenet"`` (from torchvision's cache), ``"auto"`` (ImageNet if
        cached, else random) or a ``state_dict`` file. What was used is reported
        (``info["weights_source"]``).
    amp, channels_last, torch_compile, grad_accum_steps
        :class:`~geoplant.train.TrainConfig`'s ``amp``, ``channels_last``, ``compile``,
        ``grad_accum_steps``.
    nproc
        Training processes. Above 1, training runs on ``nproc`` torchrun workers started
        from here (DDP: Gloo on CPU, NCCL with one GPU each on CUDA), each on its shard of
        the training surveys; rank 0 alone writes checkpoints, and the trained weights come
        back to this process, which predicts. The notebook (or script) stays one process.
    fresh
        Delete the checkpoints of an earlier run in ``out_dir`` and start over.
    progress
        Progress bars and one summary line per epoch.
    init_from
        A weights file of :func:`geoplant.presence_only.save_pretrained` (e.g. an env
        encoder pre-trained on PO records, :func:`geoplant.presence_only.fit_po`): the
        encoders it shares with this model, and their head columns, start from it
        (:func:`geoplant.presence_only.load_pretrained`). Recorded with its sha256 in the
        checkpoint settings: a resume with another file is refused.

    Returns
    -------
    (validation predictions with labels, test predictions, TrainResult)
        ``info`` of the predictions: epochs run, best epoch, device, world size,
        throughput, the weights' sources, AMP setting and normalisation surveys.
    """
    from geoplant.train import predict

    if nproc < 1:
        raise GeoplantError(f"nproc must be >= 1, got {nproc}")
    if init_from is not None and not Path(init_from).is_file():
        raise GeoplantError("init_from weights not found", path=init_from,
                            fix="pass a file written by geoplant.presence_only.save_pretrained")
    job = TorchJob(
        modalities=tuple(modalities), epochs=epochs, batch_size=batch_size, lr=lr, loss=loss,
        seed=seed, num_workers=num_workers, patience=patience,
        encoder_kwargs={m: dict(v) for m, v in (encoder_kwargs or {}).items()},
        weights=weights, amp=amp, channels_last=channels_last, torch_compile=torch_compile,
        grad_accum_steps=grad_accum_steps, fresh=fresh, progress=progress,
        checkpoint_dir=str(Path(out_dir) / "checkpoints") if out_dir else None,
        init_from=os.fspath(init_from) if init_from is not None else None)
    stats = training_stats(store, plan, modalities, out_dir)
    if nproc > 1:
        result = _fit_on_workers(store, plan, job, stats, nproc)
    else:
        result = _train(store, plan, job, stats)
    val, test = _datasets(store, plan, modalities, stats, ("val", "test"))
    val_ids, val_probs = predict(result.model, val.loader(batch_size, shuffle=False), amp=amp,
                                 progress=progress)
    test_ids, test_probs = predict(result.model, test.loader(batch_size, shuffle=False),
                                   amp=amp, progress=progress)
    info = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "device": str(result.device), "world_size": nproc, "amp": amp,
            "weights_source": weights_sources(result.model),
            "normalization_surveys": int(stats.get("n_surveys", len(plan.train_ids))),
            "init_from": job.init_from,
            "train_samples_per_s": round(float(np.mean(
                [h.samples_per_s for h in result.history])), 1) if result.history else None}
    species = store.species["speciesId"].to_numpy(np.int64)
    return (Predictions(val_ids, val_probs, species, _labels_for(store, val_ids), info),
            Predictions(test_ids, test_probs, species, None, info), result)


def env_features(store: Store, split: str, survey_ids: np.ndarray) -> np.ndarray:
    """Env values plus lon/lat per survey (the classic baselines' inputs)."""
    cube = store.cube(split)
    env = cube["env"].sel(surveyId=survey_ids).values.astype(np.float64)
    env[~np.isfinite(env)] = np.nan
    records = store.records(split, columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").set_index("surveyId").loc[survey_ids]
    return np.column_stack([records["lon"].to_numpy(), records["lat"].to_numpy(), env])


def fit_classic(store: Store, plan: Plan, method: str, **kwargs: Any
                ) -> tuple[Predictions, Predictions, FrequencyBaseline | EnvLogisticBaseline]:
    """Fit a non-torch baseline: ``"frequency"`` (naive, global or per cell) or
    ``"logistic"`` (per-species logistic regression on env values, MaxEnt-style)."""
    from geoplant.models import EnvLogisticBaseline, FrequencyBaseline

    species = store.species["speciesId"].to_numpy(np.int64)
    x_train = env_features(store, "pa_train", plan.train_ids)
    x_val = env_features(store, "pa_train", plan.val_ids)
    x_test = env_features(store, plan.test_split, plan.test_ids)
    y_train = _labels_for(store, plan.train_ids)
    if method == "frequency":
        model: FrequencyBaseline | EnvLogisticBaseline = FrequencyBaseline(**kwargs)
    elif method == "logistic":
        model = EnvLogisticBaseline(**kwargs)
    else:
        raise GeoplantError(f"unknown classic method {method!r}",
                            fix="use 'frequency' or 'logistic'")
    model.fit(x_train, y_train)
    info = {"device": "cpu", "world_size": 1}
    val = Predictions(plan.val_ids, model.predict_proba(x_val), species,
                      _labels_for(store, plan.val_ids), info)
    test = Predictions(plan.test_ids, model.predict_proba(x_test), species, None, info)
    return val, test, model


def choose_decoder(val: Predictions, methods: tuple[str, ...] = ("top_k", "average_k",
                                                                  "threshold", "expected_f1"),
                   *, progress: bool = True) -> dict[str, Any]:
    """The decoder (and parameter) with the best validation samples-F1 (a progress bar over
    the methods unless ``progress=False``)."""
    from geoplant import decode, metrics

    if val.labels is None:
        raise GeoplantError("validation predictions carry no labels")
    best: dict[str, Any] = {"samples_f1": -1.0}
    table = {}
    for method in _bar(methods, desc="decoders", unit="decoder", disable=not progress):
        if method == "expected_f1":
            score = metrics.samples_f1(val.labels, decode.expected_f1_optimal(val.probs))
            param = None
        else:
            tuned = decode.tune(val.probs, val.labels, method)
            score, param = tuned.best_score, tuned.best_param
        table[method] = {"param": param, "samples_f1": round(float(score), 4)}
        if score > best["samples_f1"]:
            best = {"method": method, "param": param, "samples_f1": float(score)}
    best["candidates"] = table
    return best


def _bar(iterable: Any, **kwargs: Any) -> Any:
    """A :mod:`tqdm.auto` bar (text when ipywidgets is missing, without its warning; the
    torch-free twin of :func:`geoplant.train.progress.bar`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def truth_dir(store: Store) -> Path | None:
    """The synthetic truth folder of the store's raw release, if any."""
    folder = Path(store.manifest.get("raw_root", "")) / "truth"
    return folder if (folder / "species.csv").is_file() else None


def score(store: Store, plan: Plan, test: Predictions, decoder: dict[str, Any],
          val: Predictions | None = None, *, bootstrap: int = 1000,
          seed: int = 0) -> dict[str, Any]:
    """Metrics of the decoded test predictions against the synthetic truth, with the oracle's.

    Every test score carries a 95% bootstrap interval over the test surveys (``<name>_ci``,
    :func:`score_intervals`; ``bootstrap`` resamples, seeded by ``seed``), and the per-survey
    F1 of the model and the oracle are under :data:`PER_SURVEY_KEY` (which
    :func:`write_metrics` writes to ``per_survey.csv``, so two runs can be compared survey by
    survey). Without a truth (real data), only validation metrics are returned.
    """
    from geoplant import decode, metrics

    out: dict[str, Any] = {"decoder": decoder["method"], "decoder_param": decoder["param"],
                           "val_samples_f1": round(decoder["samples_f1"], 4)}
    if val is not None:
        out["val_auc_mean"] = _nanmean(metrics.auc_per_species(val.labels, val.probs))
    folder = truth_dir(store)
    if folder is None:
        return out
    truth = decode.read_synthetic_truth(folder, plan.test_split)
    # Our columns are the store's species; the truth's all species of the world.
    probs = np.zeros_like(truth.probabilities)
    col = {int(s): i for i, s in enumerate(truth.species_ids)}
    ours = np.array([col.get(int(s), -1) for s in test.species_ids])
    rows = np.searchsorted(truth.survey_ids, test.survey_ids) \
        if np.all(np.diff(truth.survey_ids) > 0) else \
        np.array([np.flatnonzero(truth.survey_ids == s)[0] for s in test.survey_ids])
    keep = ours >= 0
    probs[np.ix_(rows, ours[keep])] = test.probs[:, keep]
    sets = decode.decode(probs, decoder["method"], decoder["param"])
    oracle_sets = decode.expected_f1_optimal(truth.probabilities)
    summary = metrics.evaluate_sets(truth.labels, sets)
    out.update({
        "test_samples_f1": round(float(summary["samples_f1"]), 4),
        "test_samples_precision": round(float(summary["samples_precision"]), 4),
        "test_samples_recall": round(float(summary["samples_recall"]), 4),
        "test_mean_set_size": round(float(sets.sum(axis=1).mean()), 2),
        "test_auc_mean": _nanmean(metrics.auc_per_species(truth.labels, probs)),
        "oracle_samples_f1": round(float(metrics.samples_f1(truth.labels, oracle_sets)), 4),
    })
    out["fraction_of_oracle"] = round(out["test_samples_f1"] / out["oracle_samples_f1"], 4)
    f1 = metrics.samples_f1_per_survey(truth.labels, sets)
    oracle_f1 = metrics.samples_f1_per_survey(truth.labels, oracle_sets)
    out.update(score_intervals(f1, oracle_f1, n=bootstrap, seed=seed))
    out[PER_SURVEY_KEY] = {"surveyId": truth.survey_ids, "f1": f1, "oracle_f1": oracle_f1}
    return out


def score_intervals(f1: np.ndarray, oracle_f1: np.ndarray, *, n: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict[str, Any]:
    """95% bootstrap intervals (test surveys resampled, paired) of a model's samples-F1, the
    oracle's and their ratio: ``test_samples_f1_ci``, ``oracle_samples_f1_ci``,
    ``fraction_of_oracle_ci`` (rounded ``[lo, hi]`` lists) and the ``bootstrap`` settings."""
    from geoplant import metrics

    ci = metrics.bootstrap_means({"model": f1, "oracle": oracle_f1},
                                 ratios={"fraction": ("model", "oracle")}, n=n, seed=seed,
                                 level=level)
    return {"test_samples_f1_ci": [round(v, 4) for v in ci["model"]],
            "oracle_samples_f1_ci": [round(v, 4) for v in ci["oracle"]],
            "fraction_of_oracle_ci": [round(v, 4) for v in ci["fraction"]],
            "bootstrap": {"n": n, "seed": seed, "level": level, "over": "test surveys",
                          "n_surveys": len(f1)}}


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else float("nan")


def write_metrics(out_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (atomically) into ``out_dir`` (created if needed).

    NumPy scalars and arrays become JSON numbers and lists; anything else unknown, its
    ``str``. The per-survey scores of :func:`score` (:data:`PER_SURVEY_KEY`) go to
    ``per_survey.csv`` beside it instead. Returns the file's path.
    """
    out = dict(metrics)
    per_survey = out.pop(PER_SURVEY_KEY, None)
    if per_survey is not None:
        import pandas as pd

        text = pd.DataFrame(per_survey).to_csv(index=False, float_format="%.6g")
        atomic_write_text(Path(out_dir) / PER_SURVEY_FILE, text)
        out["per_survey_file"] = PER_SURVEY_FILE
    text = json.dumps(out, indent=1, default=json_default) + "\n"
    return atomic_write_text(Path(out_dir) / "metrics.json", text)


def read_per_survey(run_dir: str | os.PathLike[str]) -> Any:
    """The ``per_survey.csv`` of a run folder as a DataFrame (surveyId, f1, oracle_f1).

    Raises
    ------
    GeoplantError
        The run wrote no per-survey scores (no synthetic truth, or an older run).
    """
    import pandas as pd

    path = Path(run_dir) / PER_SURVEY_FILE
    if not path.is_file():
        raise GeoplantError("no per-survey scores", path=path,
                            fix="run the baseline on a synthetic world (it has a truth)")
    return pd.read_csv(path)


