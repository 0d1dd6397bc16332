"""``geoplant kaggle push`` / ``pull``: run a named baseline as a Kaggle notebook kernel.

The baseline's notebook (``baselines/<name>.yaml`` -> ``notebooks/<notebook>``) gets its
parameters injected by papermill's ``parameterize_notebook`` and is written with
``kernel-metadata.json`` into a staging folder, which ``KaggleApi.kernels_push`` uploads.
On Kaggle the notebook finds the attached store under ``/kaggle/input`` and writes
``metrics.json``, ``submission.csv`` and figures to ``/kaggle/working``: the kernel's output,
which ``KaggleApi.kernels_output`` fetches.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text
from geoplant.kaggle import metadata as md
from geoplant.kaggle.client import (
    configured_username,
    is_transient,
    kaggle_api,
    kaggle_error,
    quiet,
)

DEFAULT_COMPETITION = "geolifeclef-2024"
#: Kernel states after which nothing changes (``kagglesdk`` ``KernelWorkerStatus`` names).
_FAILED = ("error", "cancel_requested", "cancel_acknowledged")
#: Consecutive transient failures of a status check (network, 429, 5xx) tolerated by --wait.
_MAX_POLL_FAILURES = 3


@dataclass
class KernelPush:
    """What ``push_baseline`` staged and did."""

    ref: md.Ref
    staging: Path
    notebook: Path
    metadata: dict[str, Any]
    parameters: dict[str, Any]
    pushed: bool = False
    url: str | None = None
    version: int | None = None
    status: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human summary, one line per item."""
        meta = self.metadata
        out = [f"staging: {self.staging} ({self.notebook.name}, {md.KERNEL_METADATA_FILE})",
               f"kernel: {self.ref}  title {meta['title']!r}  "
               f"{'GPU' if meta['enable_gpu'] else 'CPU'}  "
               f"{'private' if meta['is_private'] else 'public'}  internet off",
               "inputs: " + ", ".join([*meta["dataset_sources"], *meta["competition_sources"],
                                       *meta["kernel_sources"]]),
               "parameters: " + json.dumps(self.parameters, default=str)]
        if not self.pushed:
            out.append("dry run: nothing pushed; without --dry-run this runs "
                       "KaggleApi.kernels_push on the staging folder")
        else:
            version = f" version {self.version}" if self.version else ""
            out.append(f"pushed {self.ref}{version}: "
                       f"{self.url or 'https://www.kaggle.com/code/' + str(self.ref)}")
        if self.status:
            out.append(f"kernel {self.ref} finished: {self.status}; fetch its outputs with "
                       f"`geoplant kaggle pull {self.ref} --out DIR`")
        return out + self.notes


def parameter_value(text: str) -> Any:
    """A ``-p KEY VALUE`` value parsed as YAML (numbers, booleans, lists), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _baseline(name: str) -> tuple[dict[str, Any], Path]:
    from geoplant.run import _repo_dir, list_baselines

    baselines = list_baselines()
    if name not in baselines:
        raise GeoplantError(f"unknown baseline {name!r}",
                            fix=f"use one of: {', '.join(baselines)} (geoplant run --list)")
    spec = baselines[name]
    return spec, _repo_dir("notebooks") / spec["notebook"]


def _parameterized(notebook: Path, parameters: Mapping[str, Any]) -> str:
    """The notebook's JSON with papermill's ``injected-parameters`` cell."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    try:
        nb = load_notebook_node(str(notebook))  # adds the metadata papermill expects
    except (OSError, ValueError) as err:
        raise GeoplantError(f"cannot read the notebook ({err})", path=notebook,
                            fix="restore it from the geoplant checkout") from None
    nb = parameterize_notebook(nb, dict(parameters))
    return str(nbformat.writes(nb))


def _kernel_ref(kernel: str | None, baseline: str, dataset: md.Ref) -> md.Ref:
    owner = configured_username() or dataset.owner
    return md.parse_ref(kernel or f"geoplant-{baseline}", "kernel", default_owner=owner)


def stage_kernel(baseline: str, dataset: str, *, kernel: str | None = None,
                 title: str | None = None, competition: str | None = DEFAULT_COMPETITION,
                 gpu: bool = False, public: bool = False,
                 parameters: Mapping[str, Any] | None = None,
                 extra_datasets: Sequence[str] = (), kernel_sources: Sequence[str] = (),
                 staging: str | os.PathLike[str] | None = None) -> KernelPush:
    """Write the parameterised notebook and ``kernel-metadata.json`` into a staging folder.

    Parameters
    ----------
    baseline
        A named baseline (``geoplant run --list``).
    dataset
        ``OWNER/SLUG`` of the Kaggle dataset holding the store (``geoplant kaggle publish``).
    kernel
        ``[OWNER/]SLUG`` of the kernel (default ``<your user>/geoplant-<baseline>``; the owner
        defaults to the configured Kaggle user, else the dataset's owner).
    title
        Kernel title (default: the slug with spaces, so Kaggle maps it back to the slug).
    competition
        Competition attached as input (``None`` or ``""``: none).
    gpu, public
        Run on a GPU; make the kernel public (default private).
    parameters
        Overrides of the baseline's parameters (``data`` and ``out_dir`` default to the
        Kaggle locations: the store found under ``/kaggle/input``, ``/kaggle/working``).
    extra_datasets, kernel_sources
        More inputs, e.g. a dataset or utility script providing the ``geoplant`` package.
    staging
        Folder written (default ``kaggle-kernels/<slug>`` in the current folder).
    """
    spec, notebook = _baseline(baseline)
    data_ref = md.parse_ref(dataset, "dataset")
    ref = _kernel_ref(kernel, baseline, data_ref)
    datasets = [str(data_ref), *(str(md.parse_ref(d, "dataset")) for d in extra_datasets)]
    kernels = [str(md.parse_ref(k, "kernel")) for k in kernel_sources]
    params = {**spec.get("parameters", {}), **(parameters or {}), "baseline": baseline}
    code_file = f"{ref.slug}.ipynb"
    meta = md.kernel_metadata(ref, title=title or md.slug_title(ref.slug), code_file=code_file,
                              dataset_sources=datasets,
                              competition_sources=[competition] if competition else [],
                              kernel_sources=kernels, gpu=gpu, private=not public)
    text = _parameterized(notebook, params)
    folder = (Path(staging) if staging else Path("kaggle-kernels") / ref.slug).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the staging folder ({err.strerror})", path=folder,
                            fix="pass a writable --staging DIR") from None
    atomic_write_text(folder / code_file, text)
    atomic_write_text(folder / md.KERNEL_METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    return KernelPush(ref, folder, folder / code_file, meta, params)


def push_baseline(baseline: str, dataset: str, *, dry_run: bool = False, wait: bool = False,
                  poll_interval: float = 30.0, timeout: float = 12 * 3600,
                  report: Callable[[str], None] | None = None, **stage: Any) -> KernelPush:
    """Push a baseline notebook as a Kaggle kernel (which runs it), optionally wait for it.

    Parameters
    ----------
    baseline, dataset, **stage
        See :func:`stage_kernel`.
    dry_run
        Only stage: no credentials, no network.
    wait
        Poll ``KaggleApi.kernels_status`` until the run completes or fails.
    poll_interval, timeout, report
        Seconds between polls, at most this long in all, and a callback given each new
        status (see :func:`wait_for_kernel`).

    Raises
    ------
    GeoplantError
        Bad names, missing credentials, a refused push, inputs Kaggle could not attach, a
        failed or cancelled run, or a run still going after ``timeout`` seconds.
    """
    push = stage_kernel(baseline, dataset, **stage)
    if dry_run:
        return push
    api = kaggle_api(f"push kernel {push.ref}")
    try:
        with quiet():
            response = api.kernels_push(str(push.staging))
    except Exception as err:  # the client raises requests.HTTPError, ValueError, ...
        raise kaggle_error(err, f"push kernel {push.ref}", path=push.staging,
                           invalid=f"check {md.KERNEL_METADATA_FILE} in the staging folder",
                           forbidden=f"push kernels under your own user: --kernel "
                                     f"YOU/{push.ref.slug}") from None
    error = getattr(response, "error", None)
    if error:
        raise GeoplantError(f"Kaggle refused kernel {push.ref}: {error}", path=push.staging,
                            fix=f"check {md.KERNEL_METADATA_FILE} in the staging folder")
    push.pushed, push.url = True, getattr(response, "url", None) or None
    push.version = getattr(response, "version_number", None) or None
    bad = [*(getattr(response, "invalid_dataset_sources", None) or []),
           *(getattr(response, "invalid_competition_sources", None) or []),
           *(getattr(response, "invalid_kernel_sources", None) or [])]
    if bad:
        raise GeoplantError(f"kernel {push.ref} was pushed but Kaggle could not attach "
                            f"{', '.join(map(str, bad))}", path=push.staging,
                            fix="publish the store first (geoplant kaggle publish), join the "
                                "competition, and check the slugs")
    if wait:
        push.status = wait_for_kernel(str(push.ref), poll_interval=poll_interval,
                                      timeout=timeout, api=api, report=report)
    return push


def wait_for_kernel(kernel: str, *, poll_interval: float = 30.0, timeout: float = 12 * 3600,
                    api: Any = None, report: Callable[[str], None] | None = None,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> str:
    """Poll ``KaggleApi.kernels_status`` until the kernel's run ends; return ``"complete"``.

    ``report`` is called with each new status (``queued``, ``running``, ...).

    Raises
    ------
    GeoplantError
        When the run fails or is cancelled (with Kaggle's failure message), or is still
        queued/running after ``timeout`` seconds.
    """
    ref = md.parse_ref(kernel, "kernel")
    api = api if api is not None else kaggle_api(f"check kernel {ref}")
    deadline = clock() + timeout
    status, failures = "", 0
    while True:
        try:
            with quiet():
                response = api.kernels_status(str(ref))
        except Exception as err:
            failures += 1
            if failures >= _MAX_POLL_FAILURES or not is_transient(err) or (
                    clock() + poll_interval > deadline):
                raise kaggle_error(err, f"check kernel {ref}", not_found="check the kernel "
                                   "slug (OWNER/SLUG of kaggle.com/code/OWNER/SLUG)") from None
            sleep(poll_interval)
            continue
        failures = 0
        raw = getattr(response, "status", None)
        new = str(getattr(raw, "name", raw) or "unknown").lower()
        if report is not None and new != status:
            report(new)
        status = new
        if status == "complete":
            return status
        if status in _FAILED:
            message = getattr(response, "failure_message", None) or "no failure message"
            raise GeoplantError(f"kernel {ref} run ended with status {status}: {message}",
                                fix=f"read its log: geoplant kaggle pull {ref} --out DIR "
                                    f"(or https://www.kaggle.com/code/{ref})")
        if clock() + poll_interval > deadline:
            raise GeoplantError(f"kernel {ref} still {status} after {timeout:g} s",
                                fix=f"wait longer (--timeout) or fetch it later: geoplant "
                                    f"kaggle pull {ref} --out DIR")
        sleep(poll_interval)


def pull_kernel(kernel: str, out: str | os.PathLike[str]) -> list[Path]:
    """Fetch a kernel's outputs (``metrics.json``, ``submission.csv``, figures, its log) into
    ``out`` through ``KaggleApi.kernels_output``; return the files written."""
    ref = md.parse_ref(kernel, "kernel")
    folder = Path(out).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the output folder ({err.strerror})", path=folder,
                            fix="pass a writable --out DIR") from None
    api = kaggle_api(f"pull kernel {ref}")
    try:
        with quiet():
            files, _ = api.kernels_output(str(ref), str(folder), force=True, quiet=True)
    except Exception as err:
        raise kaggle_error(err, f"fetch the outputs of kernel {ref}", path=folder,
                           not_found="check the kernel slug (OWNER/SLUG of "
                                     "kaggle.com/code/OWNER/SLUG)") from None
    return [Path(f) for f in files]
