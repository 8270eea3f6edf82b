"""What the bulk loaders take: one chunk of phases and their estimation events, column by column.

The synthetic generator (:mod:`autopack_pipeline.synth`) yields these; the loaders turn them into the
rows of ``runs``, ``tiers``, ``phases`` and ``token_estimation_v2_events``. The column names are
listed where the generator fills them (``synth/generate.py``) and read in ``rows.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class SynthChunk:
    """One chunk of generated rows, column by column (numpy arrays / lists)."""

    phases: dict[str, np.ndarray]
    events: dict[str, np.ndarray]
    phase_ids: str = "per-run"  # one of synth.generate.PHASE_ID_SCHEMES
    phase_digits: int = 5  # zero-padded width of the phase number in a phase id
    run_digits: int = 5  # the same for the run number
    # Per text column given as codes too (``<name>_code`` beside ``<name>``): the texts the codes number.
    # Taking them by code makes the Arrow column without a Python object per value.
    labels: dict[str, pa.Array] = field(default_factory=dict)
