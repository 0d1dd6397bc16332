"""Kaggle-native publishing: a store as a dataset, a baseline as a GPU kernel, a submission.

Everything goes through the official ``kaggle`` client (``KaggleApi``), with credentials from
``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``::

    geoplant kaggle publish STORE --dataset OWNER/SLUG [--dry-run]  # dataset_create_new/version
    geoplant kaggle push BASELINE --dataset OWNER/SLUG --gpu --wait  # kernels_push, _status
    geoplant kaggle pull OWNER/KERNEL --out DIR                      # kernels_output
    geoplant kaggle submit SUBMISSION.csv --raw RAW [--dry-run]      # competition_submit

Python API: :func:`publish_store`, :func:`push_baseline`, :func:`wait_for_kernel`,
:func:`pull_kernel`, :func:`submit` (and :func:`check_submission` to validate only).
``--dry-run`` / ``dry_run=True`` writes the files Kaggle would receive and needs neither
credentials nor network.

Inside a Kaggle notebook, :func:`resolve_data` picks the data (``data = None``): a store
attached under ``/kaggle/input``, else one built once from the attached competition data or
GeoPlant dataset into ``/kaggle/working/geoplant-store`` (:func:`find_attached_store`,
:func:`find_attached_release`).

Submodules: ``metadata`` (dataset/kernel metadata, data card), ``client`` (the quiet,
authenticated client and its one-line errors), ``publish``, ``kernels``, ``submit``, ``cli``,
``attached`` (the data a notebook finds on Kaggle).
"""

from geoplant.kaggle.attached import find_attached_release, find_attached_store, resolve_data
from geoplant.kaggle.cli import configure_parser, run
from geoplant.kaggle.kernels import (
    KernelPush,
    pull_kernel,
    push_baseline,
    stage_kernel,
    wait_for_kernel,
)
from geoplant.kaggle.metadata import data_card, dataset_metadata, kernel_metadata
from geoplant.kaggle.publish import Publication, publish_store, stage_dataset
from geoplant.kaggle.submit import SubmitResult, check_submission, competition_test_ids, submit

__all__ = [
    "KernelPush",
    "Publication",
    "SubmitResult",
    "check_submission",
    "competition_test_ids",
    "configure_parser",
    "data_card",
    "dataset_metadata",
    "find_attached_release",
    "find_attached_store",
    "kernel_metadata",
    "publish_store",
    "pull_kernel",
    "push_baseline",
    "resolve_data",
    "run",
    "stage_dataset",
    "stage_kernel",
    "submit",
    "wait_for_kernel",
]
