"""The seed files the analysis reads, found through the settings: coefficients and model prices."""

from __future__ import annotations

from autopack_pipeline.domain.coefficients import CoefficientTable, load_coefficients
from autopack_pipeline.domain.prices import PRICES_FILE_NAME, PriceTable, load_price_table
from autopack_pipeline.settings import REPO_ROOT, Settings


def load_coefficients_for(settings: Settings) -> CoefficientTable:
    """The estimator's coefficient file in force (``estimator_coefficients.yaml`` of the seeds directory)."""
    return load_coefficients(settings.seeds_dir / "estimator_coefficients.yaml")


def load_prices_for(settings: Settings) -> PriceTable:
    """``model_prices.yaml`` of the seeds directory; a seeds directory without one uses the bundled file."""
    path = settings.seeds_dir / PRICES_FILE_NAME
    if not path.exists():
        path = REPO_ROOT / "seeds" / PRICES_FILE_NAME
    return load_price_table(path)
