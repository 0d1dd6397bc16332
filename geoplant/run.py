"""``geoplant run``: execute a named baseline (``baselines/<name>.yaml``) with papermill.

A baseline file names a notebook and its parameters::

    name: mme-multimodal
    notebook: 03_multimodal.ipynb
    description: Multimodal fusion (MME) of Sentinel-2, Landsat, climate and env encoders.
    parameters: {modalities: [sentinel2, landsat, climate, env], epochs: 6}

``geoplant run NAME --data STORE --out DIR [-p KEY VALUE]...`` saves the executed notebook,
the ``metrics.json`` it writes and a model card (``MODEL_CARD.md``: data sources and citation,
method, parameters, metrics, hardware, duration) in ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

from geoplant import __version__
from geoplant.errors import GeoplantError

_CITATION = ("Picek L., Botella C., Servajean M., et al. GeoPlant: Spatial Plant Species "
             "Prediction Dataset. NeurIPS 2024 Datasets and Benchmarks (arXiv:2408.13928).")


def _repo_dir(name: str) -> Path:
    """``baselines/`` or ``notebooks/``: next to the package (checkout) or packaged."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / name, here / name):
        if candidate.is_dir():
            return candidate.resolve()
    raise GeoplantError(f"no {name}/ folder found", path=here.parent,
                        fix="run from a geoplant checkout (pip install -e .)")


def baselines_dir() -> Path:
    """Folder of the named baselines."""
    return Path(os.environ.get("GEOPLANT_BASELINES", _repo_dir("baselines")))


def list_baselines() -> dict[str, dict[str, Any]]:
    """All baselines by name (sorted)."""
    out = {}
    for path in sorted(baselines_dir().glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        out[spec["name"]] = {**spec, "_file": str(path)}
    return out


def _coerce(value: str) -> Any:
    """A CLI parameter value parsed as YAML (numbers, booleans, lists), else the string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def run_baseline(name: str, data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 parameters: dict[str, Any] | None = None, progress: bool = True,
                 kernel_name: str | None = None) -> dict[str, Any]:
    """Execute a baseline notebook with papermill; return its metrics.

    Parameters
    ----------
    name
        Baseline name (a ``baselines/*.yaml``).
    data
        Store folder (``geoplant build``) or URL.
    out
        Output folder: executed notebook, ``metrics.json``, ``MODEL_CARD.md``.
    parameters
        Overrides of the baseline's parameters.
    progress
        Show papermill's cell progress bar.
    kernel_name
        Jupyter kernel (default: the current Python's ``python3`` kernel).
    """
    import papermill as pm

    baselines = list_baselines()
    if name not in baselines:
        raise GeoplantError(f"unknown baseline {name!r}",
                            fix=f"use one of: {', '.join(baselines)}")
    spec = baselines[name]
    notebook = _repo_dir("notebooks") / spec["notebook"]
    out_dir = Path(out).expanduser().absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the output folder ({err.strerror})", path=out_dir,
                            fix="choose a writable --out") from None
    from geoplant.store import open_store

    store = open_store(data)  # fail early, with a clear message, on a bad --data
    params = {**spec.get("parameters", {}), **(parameters or {}),
              "data": str(data), "out_dir": str(out_dir), "baseline": name}
    started = time.perf_counter()
    executed = out_dir / f"{name}.ipynb"
    try:
        pm.execute_notebook(str(notebook), str(executed), parameters=params,
                            progress_bar=progress, kernel_name=kernel_name,
                            cwd=str(notebook.parent))
    except pm.PapermillExecutionError as err:
        raise GeoplantError(f"baseline {name!r} failed in cell {err.exec_count}: "
                            f"{err.ename}: {err.evalue}", path=executed,
                            fix="open the executed notebook to see the failing cell") from None
    seconds = time.perf_counter() - started
    metrics_file = out_dir / "metrics.json"
    if not metrics_file.exists():
        raise GeoplantError("the notebook wrote no metrics.json", path=executed,
                            fix="the notebook's last cell must call geoplant.experiment."
                                "write_metrics")
    metrics = json.loads(metrics_file.read_text())
    metrics.setdefault("duration_s", round(seconds, 1))
    metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(
        model_card(name, spec, params, metrics, store.manifest, seconds))
    return metrics


def _hardware() -> str:
    import torch

    cpu = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"{cpu}; GPU: {names}"
    return cpu


def model_card(name: str, spec: dict[str, Any], params: dict[str, Any],
               metrics: dict[str, Any], manifest: dict[str, Any], seconds: float) -> str:
    """A Markdown model card for an executed baseline."""
    synthetic = (Path(manifest.get("raw_root", "")) / "truth").is_dir()
    data_line = ("a synthetic GeoPlant world written by `geoplant sample` (known truth)"
                 if synthetic else "the GeoPlant / GeoLifeCLEF 2024 data")
    counts = manifest.get("counts", {})
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if not isinstance(v, dict | list))
    shown = {k: v for k, v in params.items() if k not in ("data", "out_dir")}
    return f"""# Model card: {name}

{spec.get("description", "")}

## Data
- Source: {data_line}; layout `{manifest.get("layout")}`, store built by
  {manifest.get("created_by")}.
- Surveys: {counts.get("pa_train_surveys", "?")} PA train; species: {counts.get("species", "?")}.
- Citation: {_CITATION} Presence-absence surveys from the European Vegetation Archive,
  presence-only records from GBIF. Licence: MIT (dataset and code, per the GeoPlant docs).

## Method
Notebook `{spec["notebook"]}` executed with papermill. Parameters:

```json
{json.dumps(shown, indent=1, default=str)}
```

## Metrics
| metric | value |
|---|---|
{rows}

## Run
- Hardware: {_hardware()}
- Duration: {seconds:.1f} s
- Software: geoplant {__version__}, Python {platform.python_version()}
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` command's options."""
    parser.add_argument("name", nargs="?", help="baseline name (see --list)")
    parser.add_argument("--data", help="store folder built by `geoplant build`")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"), help="override a parameter (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the baselines and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant run``."""
    if args.list or not args.name:
        for name, spec in list_baselines().items():
            print(f"{name:<22} {spec['notebook']:<26} {spec.get('description', '')}")
        return 0 if args.list else 2
    if not args.data or not args.out:
        raise GeoplantError("--data and --out are required",
                            fix="geoplant run NAME --data STORE --out DIR")
    params = {key: _coerce(value) for key, value in args.parameter}
    metrics = run_baseline(args.name, args.data, args.out, parameters=params,
                           progress=not args.quiet)
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(f"{args.name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in shown.items()))
    print(f"executed notebook, metrics.json and MODEL_CARD.md in {Path(args.out).absolute()}")
    return 0
