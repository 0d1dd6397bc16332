"""geoplant: multimodal species distribution modelling on GeoPlant / GeoLifeCLEF data.

The one flow: ``geoplant download`` -> raw release -> ``geoplant build`` -> store ->
``geoplant.open_store`` -> torch loaders -> models -> species sets -> submission.
``geoplant sample`` writes a synthetic release in the real raw layout, with its truth.
"""

from geoplant.errors import GeoplantError

__version__ = "0.1.0"

__all__ = ["GeoplantError", "__version__"]
