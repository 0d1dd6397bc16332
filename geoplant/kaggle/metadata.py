"""The files Kaggle reads beside an upload: ``dataset-metadata.json``, the data card
(``README.md``) and ``kernel-metadata.json``. Pure functions: no network, no credentials.

Field rules follow the kaggle CLI's documentation (``docs/datasets_metadata.md`` and
``docs/kernels_metadata.md`` of Kaggle/kaggle-api) and the checks of the installed client
(kaggle 2.x ``dataset_create_new`` / ``kernels_push``): a dataset title of 6-50 characters, a
subtitle of 20-80, exactly one licence from Kaggle's list, a slug of lowercase letters, digits
and hyphens; a kernel title of at least 5 characters that slugifies to the kernel's slug.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from geoplant import __version__
from geoplant.errors import GeoplantError

DATASET_METADATA_FILE: Final = "dataset-metadata.json"
KERNEL_METADATA_FILE: Final = "kernel-metadata.json"
DATA_CARD_FILE: Final = "README.md"

#: Licence names Kaggle accepts in ``dataset-metadata.json`` (kaggle-api datasets_metadata.md).
KAGGLE_LICENSES: Final = frozenset({
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0",
    "DbCL-1.0", "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL",
    "CC-BY-3.0", "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO",
    "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0",
    "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
})

#: Kaggle tags (unknown tags are ignored by Kaggle, not fatal).
KEYWORDS: Final = ("biology", "plants", "ecology", "earth and nature", "geospatial analysis")

CITATION: Final = ('Picek et al., "GeoPlant: Spatial Plant Species Prediction Dataset", '
                   "NeurIPS 2024 Datasets & Benchmarks, arXiv:2408.13928")
BIBTEX: Final = """@inproceedings{picek2024geoplant,
  title     = {GeoPlant: Spatial Plant Species Prediction Dataset},
  author    = {Picek, Lukas and Botella, Christophe and Servajean, Maximilien and others},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS),
               Datasets and Benchmarks Track},
  year      = {2024},
  eprint    = {2408.13928},
  archivePrefix = {arXiv}
}"""

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

#: Raw data provenance by store modality (GeoPlant paper, ``../shared/geoplant-format.md``).
_PROVENANCE: Final = {
    "po_train": "presence-only records: 13 GBIF datasets",
    "pa_train": "presence-absence surveys: European Vegetation Archive (29 datasets)",
    "sentinel2": "Sentinel-2 RGB+NIR patches (Copernicus)",
    "landsat": "Landsat quarterly time series",
    "climate": "CHELSA monthly climate time series",
    "env": "bioclimatic, elevation, land cover, SoilGrids and human footprint values",
}


@dataclass(frozen=True)
class Ref:
    """An ``owner/slug`` reference of a Kaggle dataset or kernel."""

    owner: str
    slug: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.slug}"


def parse_ref(text: str, what: str = "dataset", *, default_owner: str | None = None) -> Ref:
    """Parse ``OWNER/SLUG`` (or ``SLUG`` when ``default_owner`` is given).

    Raises
    ------
    GeoplantError
        When the owner or slug is malformed (the slug: up to 50 lowercase letters, digits and
        hyphens, as Kaggle builds them; a *new* dataset needs 6 or more, checked on creation).
    """
    owner, _, slug = text.strip().rpartition("/")
    owner = owner or (default_owner or "")
    example = "me/geoplant-store" if what == "dataset" else "me/geoplant-env-nn"
    if not owner or "/" in owner or not _OWNER.fullmatch(owner):
        raise GeoplantError(f"{what} {text!r} is not OWNER/SLUG",
                            fix=f"write it as your Kaggle user name and a slug, e.g. {example}")
    if not (len(slug) <= 50 and _SLUG.fullmatch(slug)):
        raise GeoplantError(f"{what} slug {slug!r} must be up to 50 lowercase letters, digits "
                            "or hyphens", fix=f"e.g. {example}")
    return Ref(owner, slug)


def slug_title(slug: str) -> str:
    """A title Kaggle slugifies back to ``slug``: ``geoplant-env-nn`` -> ``geoplant env nn``."""
    return slug.replace("-", " ")


def is_synthetic(manifest: Mapping[str, Any]) -> bool:
    """Whether the store was built from a ``geoplant sample`` world (its raw root has truth/)."""
    raw_root = manifest.get("raw_root")
    return bool(raw_root) and (Path(str(raw_root)) / "truth").is_dir()


def default_title(manifest: Mapping[str, Any]) -> str:
    """``GeoPlant glc24 store`` (``GeoPlant synthetic glc24 store`` for a sample world)."""
    kind = "synthetic " if is_synthetic(manifest) else ""
    return f"GeoPlant {kind}{manifest.get('layout', '')} store".replace("  ", " ")


DEFAULT_SUBTITLE: Final = "GeoParquet records and Zarr v3 cubes built by the geoplant kit"


def check_text(title: str, subtitle: str) -> None:
    """Check Kaggle's length rules of a dataset title (6-50) and subtitle (20-80)."""
    if not 6 <= len(title) <= 50:
        raise GeoplantError(f"dataset title {title!r} has {len(title)} characters; Kaggle "
                            "wants 6-50", fix="pass --title with 6 to 50 characters")
    if not 20 <= len(subtitle) <= 80:
        raise GeoplantError(f"dataset subtitle has {len(subtitle)} characters; Kaggle wants "
                            "20-80", fix="pass --subtitle with 20 to 80 characters")


@dataclass(frozen=True)
class Licence:
    """The licence of the data: Kaggle's licence name and the text for the card."""

    kaggle_name: str
    text: str
    url: str | None = None


def store_licence(manifest: Mapping[str, Any], override: str | None = None) -> Licence:
    """The licence of a store's data, from its release catalog (``data_catalog/<layout>.yaml``).

    The GeoPlant data are MIT-licensed, which is not in Kaggle's licence list: the dataset is
    then published as ``other`` and the card states the licence. ``override`` (a Kaggle licence
    name) replaces the name.
    """
    if override is not None and override not in KAGGLE_LICENSES:
        raise GeoplantError(f"{override!r} is not a Kaggle dataset licence",
                            fix="use one of: " + ", ".join(sorted(KAGGLE_LICENSES)))
    if is_synthetic(manifest):
        return Licence(override or "other", "MIT: synthetic data written by `geoplant sample` "
                       "(part of the MIT-licensed geoplant kit); no real observations.")
    ident, url = "MIT", "https://plantnet.github.io/GeoPlant/"
    note: str | None = "GeoPlant dataset and code, per the GeoPlant documentation."
    try:
        from geoplant.catalog import load_catalog

        catalog = load_catalog(str(manifest.get("layout") or "glc24"))
        ident, url, note = catalog.licence.id, catalog.licence.url or url, catalog.licence.note
    except (GeoplantError, AttributeError):
        pass
    name = override or (ident if ident in KAGGLE_LICENSES else "other")
    return Licence(name, f"**{ident}**. {note or ''}".strip(), url)


def dataset_metadata(ref: Ref, *, title: str, subtitle: str, licence: Licence,
                     description: str, keywords: Sequence[str] = KEYWORDS) -> dict[str, Any]:
    """The ``dataset-metadata.json`` content (fields of the kaggle CLI's documentation)."""
    check_text(title, subtitle)
    return {
        "title": title,
        "subtitle": subtitle,
        "description": description,
        "id": str(ref),
        "licenses": [{"name": licence.kaggle_name}],
        "keywords": list(keywords),
    }


def human_size(n: int | float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def data_card(manifest: Mapping[str, Any], *, ref: Ref, title: str, subtitle: str,
              licence: Licence, entries: Sequence[tuple[str, bool, int]] = (),
              max_sources: int = 25) -> str:
    """The data card (Markdown) of a store, from its ``manifest.json``.

    Parameters
    ----------
    manifest
        The store's manifest (counts, splits, modalities, sources, skipped items, versions).
    ref, title, subtitle, licence
        The Kaggle dataset it is published as.
    entries
        ``(name, is_folder, bytes)`` of each top-level entry of the store.
    max_sources
        Raw source files listed (the rest are counted).
    """
    synthetic = is_synthetic(manifest)
    layout = manifest.get("layout", "?")
    origin = (f"a **synthetic** GeoPlant world written by `geoplant sample` in the `{layout}` "
              "raw layout (known truth; not real observations)" if synthetic else
              f"the GeoPlant / GeoLifeCLEF 2024 raw release (`{layout}` layout)")
    counts = manifest.get("counts", {})
    count_rows = [(k, f"{v:,}" if isinstance(v, int) else str(v)) for k, v in counts.items()]
    modalities = manifest.get("modalities", {})
    modality_rows = [(split, ", ".join(mods)) for split, mods in modalities.items()]
    used = {m for mods in modalities.values() for m in mods} | set(manifest.get("splits", []))
    provenance = "\n".join(f"- {text}" for key, text in _PROVENANCE.items() if key in used)
    if synthetic:
        provenance = ("Simulated by `geoplant sample`, in the real files' formats, as stand-ins "
                      "for:\n\n" + provenance)
    sources = list(manifest.get("sources", []))
    source_rows = [(f"`{s.get('path', '?')}`", str(s.get("kind", "")),
                    human_size(int(s.get("bytes", 0))),
                    str(s.get("sha256") or s.get("listing_sha256") or "")[:12])
                   for s in sources[:max_sources]]
    more = (f"\n\n... and {len(sources) - max_sources} more (all in `manifest.json`)."
            if len(sources) > max_sources else "")
    skipped = manifest.get("skipped", {}).get("total", 0)
    entry_rows = [(f"`{name}{'/' if folder else ''}`", human_size(size))
                  for name, folder, size in entries]
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    licence_line = licence.text + (f" ({licence.url})" if licence.url else "")
    return f"""# {title}

{subtitle}.

Kaggle dataset `{ref}`: a store built by {manifest.get("created_by", "geoplant")} from {origin}.
Store format `{manifest.get("format", "?")}`: records as GeoParquet, modalities as Zarr v3
cubes (one per split, dimension `surveyId`), rasters as Zarr, and `manifest.json`
(sources with sizes and checksums, counts, skipped items, versions).

## Contents

{_table(entry_rows, ("entry", "size")) if entry_rows else "(see the file list)"}

Folders are uploaded as zip archives, which Kaggle unpacks into folders of the same name.

## Counts

{_table(count_rows, ("count", "value"))}

Modalities per split:

{_table(modality_rows, ("split", "modalities"))}

## Sources

{provenance}

Raw files read by the build ({len(sources)} sources):

{_table(source_rows, ("path", "kind", "size", "sha256"))}{more}

Bad items skipped at build: {skipped} (listed in `manifest.json`).
Software: {versions or "see manifest.json"}.

## Open the store

```python
import geoplant

store = geoplant.open_store("/kaggle/input/{ref.slug}")  # where Kaggle mounts this dataset
po = store.records("po_train", geo=True)       # GeoDataFrame, EPSG:4326
labels = store.labels("pa_train")              # scipy.sparse survey x species + index
cube = store.cube("pa_train")                  # xr.Dataset, dask-backed, lazy
```

The kit's notebooks find the store on their own: `geoplant.experiment.locate_data(None)`
returns the first folder with a `manifest.json` under `/kaggle/input`. Run a baseline on
Kaggle with `geoplant kaggle push BASELINE --dataset {ref}`.

## Licence

{licence_line}
Kaggle licence field: `{licence.kaggle_name}`.

## Citation

If you use these data, cite the GeoPlant paper: {CITATION}.

```bibtex
{BIBTEX}
```

Published with geoplant {__version__} (`geoplant kaggle publish`).
"""


def kernel_metadata(ref: Ref, *, title: str, code_file: str,
                    dataset_sources: Sequence[str], competition_sources: Sequence[str],
                    kernel_sources: Sequence[str] = (), gpu: bool = False,
                    private: bool = True) -> dict[str, Any]:
    """The ``kernel-metadata.json`` content (fields of the kaggle CLI's documentation).

    Internet is off: a competition kernel must run without it, and the data come from the
    attached dataset(s).
    """
    if len(title) < 5:
        raise GeoplantError(f"kernel title {title!r} is shorter than 5 characters",
                            fix="pass --title with at least 5 characters")
    return {
        "id": str(ref),
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": private,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": list(dataset_sources),
        "competition_sources": list(competition_sources),
        "kernel_sources": list(kernel_sources),
    }
