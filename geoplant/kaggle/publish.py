"""``geoplant kaggle publish``: a store -> a Kaggle dataset (created, or a new version).

The staging folder holds ``dataset-metadata.json``, the data card ``README.md`` and one
symbolic link per top-level entry of the store (no copy). The kaggle client uploads every
file of it and each folder as a zip (``dir_mode="zip"``), which Kaggle unpacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geoplant import __version__
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text
from geoplant.kaggle import metadata as md
from geoplant.kaggle.client import http_status, kaggle_api, kaggle_error, quiet

Action = Literal["dry-run", "create", "version"]
_OURS = (md.DATASET_METADATA_FILE, md.DATA_CARD_FILE)
#: Shortest slug the kaggle client accepts for a new dataset (``dataset_create_new``).
MIN_NEW_SLUG = 6
_INVALID = f"check {md.DATASET_METADATA_FILE} and the files in the staging folder"


@dataclass(frozen=True)
class Entry:
    """A top-level entry of the store, as it is uploaded."""

    name: str
    folder: bool
    bytes: int
    files: int

    @property
    def upload_name(self) -> str:
        """The name Kaggle receives: folders go as ``<name>.zip``."""
        return f"{self.name}.zip" if self.folder else self.name


@dataclass
class Publication:
    """What ``publish_store`` staged and did."""

    ref: md.Ref
    staging: Path
    metadata: dict[str, Any]
    entries: list[Entry]
    action: Action = "dry-run"
    url: str | None = None
    private: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def card_bytes(self) -> int:
        """Size of the data card written in the staging folder."""
        card = self.staging / md.DATA_CARD_FILE
        return card.stat().st_size if card.is_file() else 0

    def lines(self) -> list[str]:
        """A human summary, one line per item."""
        total = sum(e.bytes for e in self.entries) + self.card_bytes
        out = [f"staging: {self.staging} ({md.DATASET_METADATA_FILE}, {md.DATA_CARD_FILE} "
               "written; store entries linked)",
               f"dataset: {self.ref}  title {self.metadata['title']!r}  licence "
               f"{self.metadata['licenses'][0]['name']}  "
               f"{'private' if self.private else 'public'}",
               f"{'would upload' if self.action == 'dry-run' else 'uploaded'} "
               f"{len(self.entries) + 1} entries, {md.human_size(total)}:",
               f"  {md.DATA_CARD_FILE:<28} file, {md.human_size(self.card_bytes)}"]
        for e in self.entries:
            files = f"{e.files} file{'s' if e.files != 1 else ''}"
            kind = f"folder -> {e.upload_name} ({files})" if e.folder else "file"
            name = e.name + ("/" if e.folder else "")
            out.append(f"  {name:<28} {kind}, {md.human_size(e.bytes)}")
        if self.action == "dry-run":
            out.append(f"dry run: nothing uploaded; without --dry-run this creates {self.ref} "
                       "(KaggleApi.dataset_create_new), or a new version when it exists "
                       "(KaggleApi.dataset_create_version)")
        else:
            done = "created" if self.action == "create" else "new version of"
            url = self.url or f"https://www.kaggle.com/datasets/{self.ref}"
            out.append(f"{done} {self.ref}: {url}")
        return out + self.notes


def _entry(path: Path) -> Entry:
    if not path.is_dir():
        return Entry(path.name, False, path.stat().st_size, 1)
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return Entry(path.name, True, sum(sizes), len(sizes))


def store_entries(store: Path) -> list[Entry]:
    """The store's top-level entries that get uploaded (hidden and ``_``-prefixed build state
    and names the staging folder writes itself are left out), sorted by name."""
    return [_entry(p) for p in sorted(store.iterdir())
            if not p.name.startswith((".", "_")) and p.name not in _OURS]


def _read_manifest(store: Path) -> dict[str, Any]:
    from geoplant.store import open_store

    return dict(open_store(store).manifest)


def default_staging(store: Path) -> Path:
    """``<store>.kaggle`` beside the store."""
    return store.parent / f"{store.name}.kaggle"


def _prepare_staging(staging: Path, store: Path) -> None:
    """Create or refresh the staging folder: drop our old links and files, refuse others."""
    if staging == store or store in staging.parents:
        raise GeoplantError("the staging folder is inside the store", path=staging,
                            fix="pass --staging outside the store")
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeoplantError(f"cannot create the staging folder ({err.strerror})",
                            path=staging, fix="pass a writable --staging DIR") from None
    for item in staging.iterdir():
        if item.is_symlink() or item.name in _OURS:
            item.unlink()
        else:
            raise GeoplantError(f"the staging folder holds {item.name!r}, which would be "
                                "uploaded too", path=staging,
                                fix="pass an empty --staging folder (or delete this one)")


def stage_dataset(store: str | os.PathLike[str], dataset: str, *,
                  staging: str | os.PathLike[str] | None = None, title: str | None = None,
                  subtitle: str | None = None, licence: str | None = None,
                  public: bool = False) -> Publication:
    """Write ``dataset-metadata.json`` and the data card, and link the store's entries.

    Parameters
    ----------
    store
        Local store folder (``geoplant build``).
    dataset
        ``OWNER/SLUG`` of the Kaggle dataset.
    staging
        Folder to upload (default ``<store>.kaggle`` beside the store).
    title, subtitle
        Dataset title (6-50 characters) and subtitle (20-80); defaults from the manifest.
    licence
        A Kaggle licence name; default from the release catalog (MIT -> ``other``).
    public
        Whether a newly created dataset is public (a new version keeps the visibility).
    """
    if "://" in os.fspath(store):
        raise GeoplantError("publishing needs a local store folder", path=store,
                            fix="copy the store to a local folder first")
    root = Path(store).expanduser().absolute()
    ref = md.parse_ref(dataset, "dataset")
    manifest = _read_manifest(root)
    title = title or md.default_title(manifest)
    subtitle = subtitle or md.DEFAULT_SUBTITLE
    md.check_text(title, subtitle)
    lic = md.store_licence(manifest, licence)
    entries = store_entries(root)
    card = md.data_card(manifest, ref=ref, title=title, subtitle=subtitle, licence=lic,
                        entries=[(e.name, e.folder, e.bytes) for e in entries])
    meta = md.dataset_metadata(ref, title=title, subtitle=subtitle, licence=lic,
                               description=card)
    folder = Path(staging).expanduser().absolute() if staging else default_staging(root)
    _prepare_staging(folder, root)
    atomic_write_text(folder / md.DATASET_METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(folder / md.DATA_CARD_FILE, card)
    for e in entries:
        (folder / e.name).symlink_to(root / e.name, target_is_directory=e.folder)
    return Publication(ref, folder, meta, entries, private=not public)


def _exists(api: Any, ref: md.Ref, staging: Path) -> bool:
    """Whether the dataset exists (``KaggleApi.dataset_status``; HTTP 404 means no)."""
    try:
        with quiet():
            api.dataset_status(str(ref))
    except Exception as err:  # the client raises requests.HTTPError, ValueError, ...
        if http_status(err) == 404:
            return False
        raise kaggle_error(err, f"look up dataset {ref}", path=staging,
                           forbidden=f"{ref} belongs to someone else: publish under your own "
                                     "user, --dataset YOU/SLUG") from None
    return True


def _check_response(response: Any, action: str, ref: md.Ref, staging: Path) -> str | None:
    error = getattr(response, "error", None)
    if error:
        fix = ("choose another slug: --dataset OWNER/OTHER-SLUG"
               if "slug" in str(error).lower() or "in use" in str(error).lower()
               else "check the dataset metadata in the staging folder")
        raise GeoplantError(f"Kaggle refused to {action} {ref}: {error}", path=staging, fix=fix)
    url = getattr(response, "url", None)
    return str(url) if url else None


def publish_store(store: str | os.PathLike[str], dataset: str, *, title: str | None = None,
                  subtitle: str | None = None, notes: str | None = None,
                  licence: str | None = None, public: bool = False, dry_run: bool = False,
                  staging: str | os.PathLike[str] | None = None) -> Publication:
    """Publish a store as a Kaggle dataset: create it, or add a version when it exists.

    Parameters
    ----------
    store, dataset, title, subtitle, licence, public, staging
        See :func:`stage_dataset`.
    notes
        Version notes of a new version (default: the kit's version and the store's counts).
    dry_run
        Only stage (metadata + data card + links): no credentials, no network.

    Returns
    -------
    Publication
        What was staged and uploaded (``action`` is ``"create"`` or ``"version"``).

    Raises
    ------
    GeoplantError
        Bad store or names, missing credentials, a dataset of someone else, a refused upload.
    """
    pub = stage_dataset(store, dataset, staging=staging, title=title, subtitle=subtitle,
                        licence=licence, public=public)
    if dry_run:
        if len(pub.ref.slug) < MIN_NEW_SLUG:
            pub.notes.append(f"note: creating a Kaggle dataset needs a slug of "
                             f"{MIN_NEW_SLUG}-50 characters; {pub.ref.slug!r} only works for "
                             "an existing dataset")
        return pub
    ref, folder = pub.ref, pub.staging
    api = kaggle_api(f"publish {ref}")
    if _exists(api, ref, folder):
        pub.action = "version"
        text = notes or _default_notes(pub)
        call = "create a new version of"
        try:
            with quiet():
                response = api.dataset_create_version(str(folder), version_notes=text,
                                                      quiet=True, dir_mode="zip")
        except Exception as err:
            raise kaggle_error(err, f"{call} {ref}", path=folder, invalid=_INVALID,
                               forbidden=f"{ref} belongs to someone else (or you may not edit "
                                         "it): publish under your own user, --dataset "
                                         "YOU/SLUG") from None
    else:
        pub.action = "create"
        call = "create"
        if len(ref.slug) < MIN_NEW_SLUG:
            raise GeoplantError(f"{ref} does not exist, and a new dataset needs a slug of "
                                f"{MIN_NEW_SLUG}-50 characters ({ref.slug!r} has "
                                f"{len(ref.slug)})", fix="pass a longer --dataset slug")
        try:
            with quiet():
                response = api.dataset_create_new(str(folder), public=public, quiet=True,
                                                  dir_mode="zip")
        except Exception as err:
            raise kaggle_error(err, f"{call} {ref}", path=folder, invalid=_INVALID,
                               forbidden=f"you may not create datasets under {ref.owner}: "
                                         "publish under your own user, --dataset "
                                         "YOU/SLUG") from None
    pub.url = _check_response(response, call, ref, folder)
    return pub


def _default_notes(pub: Publication) -> str:
    counts: Mapping[str, Any] = {}
    try:
        counts = json.loads((pub.staging / "manifest.json").read_text()).get("counts", {})
    except (OSError, ValueError):
        pass
    shown = ", ".join(f"{k}={v}" for k, v in list(counts.items())[:4])
    return f"geoplant {__version__} store" + (f" ({shown})" if shown else "")
