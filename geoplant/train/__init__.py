"""Training for the torch models: AdamW + warmup/cosine, AMP, checkpoints, DDP.

Batches are the dicts of :class:`geoplant.torch.SurveyDataset` (modality tensors,
``"labels"`` multi-hot float32, ``"surveyId"`` int64); any model mapping such a dict to
logits ``(B, n_species)`` trains here (:class:`geoplant.models.MultimodalSDM`). ::

    seed_everything(0)
    model = MultimodalSDM(["env", "landsat"], n_species)
    result = fit(model, train_loader, val_loader, TrainConfig(epochs=10, checkpoint_dir="ckpt"))
    survey_ids, probs = predict(result.model, test_loader)

One module per concern, everything re-exported here:

:mod:`geoplant.train.loop`
    :class:`TrainConfig`, :class:`EpochLog`, :class:`TrainResult`, :func:`fit`,
    :func:`predict`.
:mod:`geoplant.train.losses`
    :func:`make_loss` (``"bce"``, ``"asl"``, ``"soft_f1"``, ``"bce+soft_f1"``),
    :class:`AsymmetricLoss`, :class:`SoftF1Loss`, :func:`pos_weight_from_labels`.
:mod:`geoplant.train.validation`
    The validation pass and its torch samples-F1 (:func:`samples_f1_topk`,
    :func:`samples_f1_threshold`).
:mod:`geoplant.train.checkpoint`
    :func:`load_checkpoint`, :data:`CHECKPOINT_VERSION`, atomic saves, RNG state capture.
:mod:`geoplant.train.device`
    :func:`select_device`, :func:`seed_everything`, autocast settings.
:mod:`geoplant.train.distributed`
    :func:`init_distributed`, all-reduces, sharding loaders by rank.
:mod:`geoplant.train.launch`
    :func:`~geoplant.train.launch.spawn`: N torchrun workers started from one process (a
    notebook kernel), their output relayed, their errors returned as one line.
:mod:`geoplant.train.progress`
    tqdm bars and the one-line epoch summaries notebooks and papermill show.

:func:`spatial_block_split` lives in the torch-free :mod:`geoplant.splits`.

One device or many
------------------
``fit`` runs on one device (CUDA if available, else MPS, else CPU) or, when started by
``torchrun`` (``WORLD_SIZE > 1`` in the environment), as one DDP process per device:
``init_process_group`` with NCCL on CUDA and Gloo on CPU, device ``cuda:$LOCAL_RANK``. A
loader whose sampler is not already distributed (no ``set_epoch``/``num_replicas``) is
rebuilt with a :class:`~torch.utils.data.distributed.DistributedSampler`; a sampler
with a ``num_replicas`` or ``world_size`` attribute is taken to shard by rank itself. Losses and
metrics are all-reduced; only rank 0 writes checkpoints and logs. ::

    torchrun --nproc_per_node=4 train_script.py

A notebook cannot be started by torchrun: :func:`geoplant.experiment.fit_torch` with
``nproc=N`` (``geoplant run NAME --nproc N``) starts N workers itself
(:mod:`geoplant.train.launch`), each joining the process group before it builds its loaders
(``BlockShuffleSampler`` takes its shard from the group), and predicts in the notebook's
process with the weights rank 0 sends back.

Speed settings
--------------
``TrainConfig.amp`` (bf16 where the GPU supports it, else fp16 with a GradScaler; off on
CPU), ``channels_last``, ``compile`` (``torch.compile``) and ``grad_accum_steps``. Batches
go to the device with non-blocking copies (pin the loader's memory) in their stored dtypes;
the loss is summed on the device and read once per ``log_every`` optimizer steps, and a
non-finite loss is caught before ``optimizer.step`` (one flag read per step).

Validation metric
-----------------
The competition metric, samples-averaged F1 (:func:`geoplant.metrics.samples_f1`), of the
top-K species of each survey (``metric="f1_topk"``, K = ``TrainConfig.top_k``) or of the
best global probability threshold on a grid (``"f1_threshold"``), or the validation loss
(``"loss"``). It is computed in torch per survey and all-reduced (exact under DDP but for
the few surveys that :class:`DistributedSampler` repeats to even out the shards); the tests
check it equals :func:`geoplant.metrics.samples_f1`.

Losses
------
``"bce"``: binary cross-entropy with optional per-species ``pos_weight``
(:func:`pos_weight_from_labels`). ``"asl"``: the asymmetric loss of Ridnik et al. (ICCV
2021): focusing ``gamma_neg`` down-weights the many easy absences and the probability
margin ``clip`` discards very easy ones; it suits thousands of species with ~20 present.
``"soft_f1"``: ``1 - mean_i softF1_i`` with ``softF1 = 2 sum(p y) / (sum p + sum y)``, a
differentiable surrogate of the samples-F1 itself (better used to fine-tune, or mixed:
``"bce+soft_f1"``).

Reproducibility and resume
--------------------------
``seed_everything`` seeds Python, NumPy and torch. A checkpoint (written atomically at every
epoch's end) holds the model, optimizer, scheduler, AMP scaler, epoch, best metric, early
stopping counter, history and the RNG states of every rank, so a resumed run continues
exactly as an uninterrupted one (tested on CPU, single process: the same losses). It also
holds the run's settings: a resume with other settings (lr, epochs, loss, the caller's
``extra_settings``...) or another model is refused in one line; ``resume=False`` discards
the old checkpoints and starts over.
"""

from geoplant.splits import spatial_block_split
from geoplant.train.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from geoplant.train.device import seed_everything, select_device
from geoplant.train.distributed import init_distributed
from geoplant.train.loop import EpochLog, TrainConfig, TrainResult, fit, predict
from geoplant.train.losses import (
    AsymmetricLoss,
    LossName,
    SoftF1Loss,
    make_loss,
    pos_weight_from_labels,
)
from geoplant.train.validation import samples_f1_threshold, samples_f1_topk

__all__ = [
    "CHECKPOINT_VERSION",
    "AsymmetricLoss",
    "EpochLog",
    "LossName",
    "SoftF1Loss",
    "TrainConfig",
    "TrainResult",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "make_loss",
    "pos_weight_from_labels",
    "predict",
    "samples_f1_threshold",
    "samples_f1_topk",
    "seed_everything",
    "select_device",
    "spatial_block_split",
]
