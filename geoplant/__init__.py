"""geoplant: multimodal species distribution modelling on GeoPlant / GeoLifeCLEF data.

The one flow: ``geoplant download`` -> raw release -> ``geoplant build`` -> store ->
``geoplant.open_store`` -> torch loaders -> models -> species sets -> submission.
``geoplant sample`` writes a synthetic release in the real raw layout, with its truth.
"""

from geoplant.errors import GeoplantError

__version__ = "0.1.0"

__all__ = ["GeoplantError", "__version__", "build", "download", "open_store"]


def __getattr__(name: str) -> object:
    # Lazy: `import geoplant` stays light; heavy modules load on first use.
    if name == "open_store":
        from geoplant.store import open_store

        return open_store
    if name == "build":
        # the package is `builder`: a submodule named `build` would replace this function
        from geoplant.builder import build

        return build
    if name == "download":
        from geoplant.downloader import download

        return download
    raise AttributeError(f"module 'geoplant' has no attribute {name!r}")
