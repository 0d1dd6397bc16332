"""The data catalog: a typed description of every downloadable part of a release.

One YAML file per release lives in ``data_catalog/`` at the repository root (``glc24.yaml``,
``geoplant.yaml``), validated against ``data_catalog/catalog.schema.json``. Installed from a
wheel, the same files are read from the package data folder ``geoplant/data/``. Set
``GEOPLANT_CATALOG_DIR`` to read them from elsewhere.

A *part* is the unit of download: one file (``kind: file``), one archive, or a multi-volume
archive (``volumes``). Each part names the release path it lands at, the sources that serve it
(a Kaggle competition/dataset, a Seafile share, a plain HTTP mirror), its size and sha256 when
known, its licence and citation, and the splits and modalities it feeds.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, NotRequired, TypeAlias, TypedDict, cast

from geoplant.errors import GeoplantError
from geoplant.layouts import SPLITS, LayoutName

PartKind = Literal["file", "archive"]
SourceType = Literal["kaggle-competition", "kaggle-dataset", "seafile", "http"]
#: How sure the catalog is of a part's facts (see ``data_catalog/README.md``).
Evidence = Literal["VERIFIED", "DOC", "INFERRED", "UNVERIFIED"]
#: ``zips``: each volume is a standalone zip; ``split``: byte pieces of one zip.
VolumeFormat = Literal["zips", "split"]
#: A JSON value, as `json.loads` returns it.
JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"

SCHEMA_FILE: Final = "catalog.schema.json"
#: Environment variable naming a folder that holds the catalog YAMLs (overrides the defaults).
CATALOG_DIR_ENV: Final = "GEOPLANT_CATALOG_DIR"


@dataclass(frozen=True)
class Licence:
    """Licence of a release or part: an SPDX-like ``id``, a ``url`` and a free ``note``."""

    id: str
    url: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Citation:
    """How to cite the data."""

    text: str
    url: str | None = None
    bibtex: str | None = None


@dataclass(frozen=True)
class Source:
    """A place that serves parts: a Kaggle competition or dataset, or an HTTP/Seafile server."""

    name: str
    type: SourceType
    ref: str | None = None
    url: str | None = None
    mount: str | None = None
    note: str | None = None

    @property
    def is_kaggle(self) -> bool:
        """Whether the source is served through the Kaggle API."""
        return self.type.startswith("kaggle")

    @property
    def kaggle_mount(self) -> str | None:
        """Folder name of this source under ``/kaggle/input`` in a Kaggle kernel."""
        if not self.is_kaggle:
            return None
        return self.mount or (self.ref or "").rsplit("/", 1)[-1] or None


@dataclass(frozen=True)
class PartSource:
    """How one source serves one part: a Kaggle ``file`` name, a remote ``path``, or ``bundle``."""

    source: str
    file: str | None = None
    path: str | None = None
    bundle: bool = False
    alt_paths: tuple[str, ...] = ()  # other names the source may serve it under, tried in turn


@dataclass(frozen=True)
class PartFile:
    """One file of a part (the archive itself, or one volume of a multi-volume archive)."""

    path: str
    size: int | None
    size_approx: bool = False
    sha256: str | None = None
    remote_path: str | None = None  # where an HTTP/Seafile source serves it, if not ``path``

    @property
    def exact_size(self) -> int | None:
        """The size in bytes when it is exact, else ``None``."""
        return None if self.size_approx else self.size


@dataclass(frozen=True)
class Content:
    """A file or folder inside an archive part, with the splits and modalities it feeds."""

    path: str
    splits: tuple[str, ...]
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class Part:
    """One downloadable unit of a release."""

    name: str
    kind: PartKind
    files: tuple[PartFile, ...]
    size: int | None
    splits: tuple[str, ...]
    modalities: tuple[str, ...]
    sources: Mapping[str, PartSource]
    licence: Licence
    citation: Citation
    evidence: Evidence
    size_approx: bool = False
    size_note: str | None = None
    volume_format: VolumeFormat | None = None
    extract_to: str | None = None
    note: str | None = None
    contents: tuple[Content, ...] = ()

    @property
    def path(self) -> str:
        """Release path of the part (its first volume for a multi-volume archive)."""
        return self.files[0].path

    @property
    def is_archive(self) -> bool:
        """Whether the part is a zip archive (single or multi-volume)."""
        return self.kind == "archive"

    @property
    def extract_dir(self) -> str:
        """Folder, relative to the release root, the archive is extracted into."""
        if self.extract_to is not None:
            return self.extract_to
        parent = PurePosixPath(self.files[0].path).parent
        return str(parent)


@dataclass(frozen=True)
class Catalog:
    """All parts of one release, with its sources, licence and citation."""

    release: str
    title: str
    layout: LayoutName
    licence: Licence
    citation: Citation
    sources: Mapping[str, Source]
    parts: tuple[Part, ...]
    description: str | None = None
    homepage: str | None = None
    path: Path | None = field(default=None, compare=False)

    def names(self) -> list[str]:
        """Names of all parts, in catalog order."""
        return [p.name for p in self.parts]

    def part(self, name: str) -> Part:
        """Return the part called ``name``; raise `GeoplantError` naming close matches."""
        for p in self.parts:
            if p.name == name:
                return p
        raise _unknown_part(name, self)

    def select(self, patterns: Iterable[str] | None) -> list[Part]:
        """Parts matching names or shell-style globs (``s24-rasters-*``); ``all`` is every part.

        Raises
        ------
        GeoplantError
            When a pattern matches no part.
        """
        if patterns is None:
            return list(self.parts)
        chosen: dict[str, Part] = {}
        for pattern in patterns:
            if pattern == "all":
                matched = list(self.parts)
            else:
                matched = [p for p in self.parts if fnmatch.fnmatchcase(p.name, pattern)]
            if not matched:
                raise _unknown_part(pattern, self)
            for p in matched:
                chosen.setdefault(p.name, p)
        return [p for p in self.parts if p.name in chosen]

    def total_size(self, parts: Iterable[Part] | None = None) -> tuple[int, int]:
        """Return (known bytes, number of parts of unknown size) over ``parts`` (default all)."""
        known, unknown = 0, 0
        for p in self.parts if parts is None else parts:
            if p.size is None:
                unknown += 1
            else:
                known += p.size
        return known, unknown


def _unknown_part(name: str, catalog: Catalog) -> GeoplantError:
    import difflib

    close = difflib.get_close_matches(name, catalog.names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return GeoplantError(
        f"unknown part {name!r} in release {catalog.release!r}",
        fix=f"{hint}list the parts with 'geoplant download --release {catalog.release} --dry-run'",
    )


# ------------------------------------------------------------------------------- locating files


def catalog_dirs() -> list[Path]:
    """Folders searched for catalog YAMLs, in order of preference."""
    dirs: list[Path] = []
    env = os.environ.get(CATALOG_DIR_ENV)
    if env:
        dirs.append(Path(env))
    here = Path(__file__).resolve().parent
    # Editable/source install: data_catalog/ at the repository root is the canonical copy.
    dirs.append(here.parent / "data_catalog")
    # Wheel install: the same files shipped as package data.
    dirs.append(here / "data")
    return dirs


def _find(filename: str) -> Path | None:
    for d in catalog_dirs():
        candidate = d / filename
        if candidate.is_file():
            return candidate
    return None


def available_releases() -> list[str]:
    """Names of the releases whose catalog can be found (first folder that has any wins)."""
    for d in catalog_dirs():
        found = sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
        if found:
            return found
    return []


def catalog_path(release: str) -> Path:
    """Path of the catalog YAML of ``release``.

    Raises
    ------
    GeoplantError
        When no catalog of that name is found.
    """
    path = _find(f"{release}.yaml")
    if path is None:
        known = ", ".join(available_releases()) or "none found"
        raise GeoplantError(
            f"no data catalog for release {release!r} (known: {known})",
            fix="use --release glc24 or --release geoplant, or pass --catalog FILE",
        )
    return path


def load_schema() -> dict[str, JSONValue]:
    """The JSON schema every catalog satisfies."""
    path = _find(SCHEMA_FILE)
    if path is None:
        raise GeoplantError(f"catalog schema {SCHEMA_FILE} not found",
                            fix=f"reinstall geoplant or set {CATALOG_DIR_ENV}")
    schema: dict[str, JSONValue] = json.loads(path.read_text(encoding="utf-8"))
    return schema


# ------------------------------------------------------------------------------- validation


def validate(data: Mapping[str, object], *, where: str | Path | None = None) -> None:
    """Check a parsed catalog against the JSON schema and the rules a schema cannot express.

    The schema check needs the ``jsonschema`` package; without it only the semantic checks run.
    Semantic checks: unique part names and file paths, every part source is a declared source,
    Kaggle parts name a file or are a bundle, splits belong to the release's layout.

    Raises
    ------
    GeoplantError
        Listing the first problems found, with the catalog path.
    """
    problems: list[str] = []
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a declared dependency
        jsonschema = None
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(load_schema())
        for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            loc = "/".join(str(x) for x in err.absolute_path) or "<root>"
            problems.append(f"{loc}: {err.message}")
    if not problems:
        problems.extend(_semantic_problems(data))
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise GeoplantError(
            "invalid data catalog: " + "; ".join(problems[:3]) + more,
            path=where,
            fix="correct the catalog YAML (schema: data_catalog/catalog.schema.json)",
        )


def _semantic_problems(data: Mapping[str, Any]) -> list[str]:
    # ``data`` is any mapping (schema-valid unless jsonschema is missing): read it defensively.
    problems: list[str] = []
    sources = data.get("sources", {})
    layout = data.get("layout")
    # An unknown layout (only possible without the schema check) has no splits.
    layout_splits = {s for name, splits in SPLITS.items() if name == layout for s in splits}
    names: set[str] = set()
    paths: set[str] = set()
    for i, raw in enumerate(data.get("parts", [])):
        name = raw.get("name", f"#{i}")
        if name in names:
            problems.append(f"parts/{i}: duplicate part name {name!r}")
        names.add(name)
        files = [raw["path"]] if "path" in raw else [v["path"] for v in raw.get("volumes", [])]
        for path in files:
            if path in paths:
                problems.append(f"parts/{i}: path {path!r} belongs to two parts")
            paths.add(path)
        for src, how in raw.get("sources", {}).items():
            if src not in sources:
                problems.append(f"parts/{i}: unknown source {src!r}")
                continue
            if sources[src]["type"].startswith("kaggle"):
                if not how.get("bundle") and not how.get("file"):
                    problems.append(f"parts/{i}: Kaggle source {src!r} needs 'file' or 'bundle'")
                if how.get("bundle") and "volumes" in raw:
                    problems.append(f"parts/{i}: a Kaggle bundle cannot be multi-volume")
        for split in [*raw.get("splits", []), *(s for c in raw.get("contents", [])
                                                 for s in c["splits"])]:
            if split not in layout_splits:
                problems.append(f"parts/{i}: split {split!r} is not a split of the "
                                f"{data.get('layout')!r} layout")
    return problems


# ------------------------------------------------------------------------------- loading


class LicenceDocument(TypedDict):
    """``licence`` in a catalog YAML (see `Licence`)."""

    id: str
    url: NotRequired[str]
    note: NotRequired[str]


class CitationDocument(TypedDict):
    """``citation`` in a catalog YAML (see `Citation`)."""

    text: str
    url: NotRequired[str]
    bibtex: NotRequired[str]


class SourceDocument(TypedDict):
    """One entry of ``sources`` in a catalog YAML (see `Source`)."""

    type: SourceType
    ref: NotRequired[str]
    url: NotRequired[str]
    mount: NotRequired[str]
    note: NotRequired[str]


class PartSourceDocument(TypedDict, total=False):
    """One entry of a part's ``sources`` (see `PartSource`)."""

    file: str
    path: str
    bundle: bool
    alt_paths: list[str]


class VolumeDocument(TypedDict):
    """One entry of a part's ``volumes`` (see `PartFile`)."""

    path: str
    size: int | None
    sha256: str | None
    size_approx: NotRequired[bool]
    remote_path: NotRequired[str]


class ContentDocument(TypedDict):
    """One entry of a part's ``contents`` (see `Content`)."""

    path: str
    splits: list[str]
    modalities: list[str]


class PartDocument(TypedDict):
    """One entry of ``parts`` in a catalog YAML (see `Part`): ``path`` for a single file,
    ``volumes`` and ``volume_format`` for a multi-volume archive."""

    name: str
    kind: PartKind
    size: int | None
    splits: list[str]
    modalities: list[str]
    sources: dict[str, PartSourceDocument]
    evidence: Evidence
    path: NotRequired[str]
    volumes: NotRequired[list[VolumeDocument]]
    volume_format: NotRequired[VolumeFormat]
    extract_to: NotRequired[str]
    size_approx: NotRequired[bool]
    size_note: NotRequired[str]
    sha256: NotRequired[str | None]
    licence: NotRequired[LicenceDocument]
    citation: NotRequired[CitationDocument]
    note: NotRequired[str]
    contents: NotRequired[list[ContentDocument]]


class CatalogDocument(TypedDict):
    """A catalog YAML once validated: the typed view of ``data_catalog/catalog.schema.json``
    (the schema is the authority)."""

    schema_version: Literal[1]
    release: str
    title: str
    layout: LayoutName
    licence: LicenceDocument
    citation: CitationDocument
    sources: dict[str, SourceDocument]
    parts: list[PartDocument]
    description: NotRequired[str]
    homepage: NotRequired[str]


def parse(data: Mapping[str, object], *, path: Path | None = None, check: bool = True,
          ) -> Catalog:
    """Build a `Catalog` from parsed YAML (validated first unless ``check`` is false).

    Parameters
    ----------
    data
        The parsed catalog YAML. With ``check=False`` it must already be a valid
        `CatalogDocument`.
    path
        The file it came from, for error messages and `Catalog.path`.
    check
        Validate ``data`` first (`validate`).

    Raises
    ------
    GeoplantError
        When ``check`` is true and the catalog is invalid.
    """
    if check:
        validate(data, where=path)
    return _build(cast(CatalogDocument, data), path)


def _build(data: CatalogDocument, path: Path | None) -> Catalog:
    licence = Licence(**data["licence"])
    citation = Citation(**data["citation"])
    sources = {name: Source(name=name, **spec) for name, spec in data["sources"].items()}
    parts = []
    for raw in data["parts"]:
        if "volumes" in raw:
            files = tuple(
                PartFile(v["path"], v["size"], bool(v.get("size_approx", False)), v["sha256"],
                         v.get("remote_path"))
                for v in raw["volumes"]
            )
        else:
            files = (PartFile(raw["path"], raw["size"], bool(raw.get("size_approx", False)),
                              raw.get("sha256")),)
        part_sources = {
            name: PartSource(source=name, file=how.get("file"), path=how.get("path"),
                             bundle=bool(how.get("bundle", False)),
                             alt_paths=tuple(how.get("alt_paths", ())))
            for name, how in raw["sources"].items()
        }
        parts.append(Part(
            name=raw["name"],
            kind=raw["kind"],
            files=files,
            size=raw["size"],
            size_approx=bool(raw.get("size_approx", False)),
            size_note=raw.get("size_note"),
            splits=tuple(raw["splits"]),
            modalities=tuple(raw["modalities"]),
            sources=part_sources,
            licence=Licence(**raw["licence"]) if "licence" in raw else licence,
            citation=Citation(**raw["citation"]) if "citation" in raw else citation,
            evidence=raw["evidence"],
            volume_format=raw.get("volume_format"),
            extract_to=raw.get("extract_to"),
            note=raw.get("note"),
            contents=tuple(Content(c["path"], tuple(c["splits"]), tuple(c["modalities"]))
                           for c in raw.get("contents", ())),
        ))
    return Catalog(
        release=data["release"], title=data["title"], layout=data["layout"], licence=licence,
        citation=citation, sources=sources, parts=tuple(parts),
        description=data.get("description"), homepage=data.get("homepage"), path=path,
    )


def load_catalog(
    release_or_path: str | os.PathLike[str] = "glc24", *, check: bool = True
) -> Catalog:
    """Load and validate the catalog of a release name (``glc24``) or of a YAML file path.

    Raises
    ------
    GeoplantError
        When the catalog is missing, not valid YAML, or does not satisfy the schema.
    """
    import yaml

    text = str(release_or_path)
    is_file = text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text
    path = Path(text) if is_file else catalog_path(text)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GeoplantError("catalog file not found", path=path,
                            fix="pass an existing YAML file to --catalog") from None
    except (OSError, yaml.YAMLError) as err:
        raise GeoplantError(f"cannot read catalog: {err}", path=path,
                            fix="check the file is readable YAML") from None
    if not isinstance(data, dict):
        raise GeoplantError("catalog is not a YAML mapping", path=path,
                            fix="see data_catalog/README.md for the format")
    return parse(data, path=path, check=check)
