"""Run and phase codes: one integer per run id, and one per phase, (run id, phase id), for the analysis.

About one phase id per phase (8.5M distinct at ten million events) made encoding them the most of
loading the arrays, and unifying the parts' run dictionaries most of the rest. So each part carries
its rows' codes (columns ``run_code`` and ``phase_code``, beside the ids), given when the part is
written: one run id has one run code in every part of a store, and the same phase (same run id and
phase id) one phase code; one phase code is one phase id (two runs may share a code when their phase
ids are equal: a phase is its run and its code together, ``EventArrays.phase_key``). A load then
reads integers only. The manifest keeps the next free codes (``run_codes``, ``phase_codes``); a
rebuild starts again at 0. A new part's codes come from ``part_codes.py``, its own phases encoded here.

:class:`PhaseEncoder` also loads a store written before parts carried codes, and the codes when a run
id or a phase id is missing (then equal phase ids get equal codes over every part: the reference
pairs ids across rows, see :meth:`PhaseEncoder.finish`).
"""

from __future__ import annotations

import numpy as np

from autopack_pipeline.storage.arrow_modules import pa, pc
from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, no_labels, numpy_of

RUN_CODE = "run_code"  # the columns of a part holding its rows' run and phase codes
PHASE_CODE = "phase_code"
# Rows per piece phase ids are dictionary-encoded in (PhaseEncoder.add).
TEXT_PIECE_ROWS = 1 << 15


class PhaseEncoder:
    """Phase ids (text) encoded into ``out`` piece by piece as rows come, and made one code per phase
    by :meth:`finish`."""

    def __init__(self, out: np.ndarray) -> None:
        self.out = out
        # Per piece, its rows and its dictionary, whose codes were written shifted past the pieces' before.
        self.pieces: list[tuple[slice, pa.Array]] = []

    def add(self, column: pa.ChunkedArray | pa.Array, start: int) -> None:
        """The phase ids of rows ``start`` on, dictionary-encoded piece by piece (``TEXT_PIECE_ROWS``
        rows), the codes shifted past the pieces before: equal codes, equal text, but one text may have
        a code per piece until :meth:`finish`. Arrow's hash table of a piece stays in the CPU's cache:
        a million phase ids cost 0.26 s of CPU encoded at once, 0.03 s in pieces of 32k."""
        text = column.cast(pa.string())
        shift = sum(len(dictionary) for _rows, dictionary in self.pieces)
        for begin in range(0, len(text), TEXT_PIECE_ROWS):
            encoded = pc.dictionary_encode(text.slice(begin, TEXT_PIECE_ROWS))
            chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
            offset = start + begin
            for chunk in chunks:  # one dictionary for the chunks of one call
                codes = numpy_of(filled(chunk.indices, -1))
                self.out[offset:offset + len(chunk)] = np.where(codes >= 0, codes + shift, -1)
                offset += len(chunk)
            dictionary = chunks[0].dictionary if chunks else no_labels()
            self.pieces.append((slice(start + begin, offset), dictionary))
            shift += len(dictionary)

    def finish(self, runs: np.ndarray) -> np.ndarray:
        """``out`` as one code per (run code, phase id) (``runs``: the rows' run codes, -1 where missing).

        Within a piece one phase id has one code. A phase of a run whose events lie in several pieces
        has a code per piece: those runs' rows (a few per piece boundary: Autopack writes a run's events
        together) are encoded again together, into codes past every piece's. Rows of other runs keep
        their piece's code; the same phase id in two such runs may differ in code, which is harmless: a
        phase is its run and its id together. When a run id or a phase id is missing somewhere, the
        codes are unified over all pieces instead (one dictionary, equal text equal code), as the
        reference's pairing of ids across rows then needs."""
        pieces, phases = self.pieces, self.out
        self.pieces = []
        if len(pieces) < 2:  # one encoding already: equal text, equal code (hashing it again cost 0.1 s)
            return phases
        if (runs < 0).any() or (phases < 0).any():
            encoded = pc.dictionary_encode(pa.concat_arrays([dictionary for _rows, dictionary in pieces]))
            lookup = np.append(numpy_of(encoded.indices).astype(np.int32), np.int32(-1))
            for rows, _dictionary in pieces:
                phases[rows] = lookup[phases[rows]]  # the codes were shifted into the concatenation already
            return phases
        # A run spans pieces when its first and last rows lie in different ones (its rows need not be
        # together). First and last rows by ufunc.at, a million rows at a time (no 10M-row index array).
        rows_in = len(phases)
        first = np.full(int(runs.max()) + 1 if rows_in else 0, rows_in, dtype=np.int64)
        last = np.full(len(first), -1, dtype=np.int64)
        for begin in range(0, rows_in, 1 << 20):
            at = np.arange(begin, min(begin + (1 << 20), rows_in))
            np.minimum.at(first, runs[at], at)
            np.maximum.at(last, runs[at], at)
        starts = np.array([rows.start for rows, _dictionary in pieces])
        seen = last >= 0
        spanning = np.zeros(len(first), dtype=bool)
        spanning[seen] = (np.searchsorted(starts, first[seen], side="right")
                          != np.searchsorted(starts, last[seen], side="right"))
        shifts = np.cumsum([0] + [len(dictionary) for _rows, dictionary in pieces])
        if spanning.any():
            texts, where = [], []
            for (rows, dictionary), shift in zip(pieces, shifts[:-1]):
                mine = np.flatnonzero(spanning[runs[rows]]) + rows.start
                if len(mine):
                    texts.append(dictionary.take(arrow_of(phases[mine] - shift)))
                    where.append(mine)
            rows = np.concatenate(where)
            joined = pc.dictionary_encode(pa.chunked_array(texts, type=pa.string()))
            phases[rows] = np.concatenate([numpy_of(c.indices) for c in joined.chunks]) + shifts[-1]
        return phases
