"""The pandas reference analysis, kept as the oracle the numpy product is tested against.

These modules are the analysis as it was first written: pandas frames, Python lists, ``statistics``
and ``math.fsum``. They are slow but plain, so the parity tests
(``autopack_pipeline_tests/unit/domain/test_analysis_against_oracle.py``) compare the product with them on random data.
The pure pieces (the Wilson interval, the result models, the gate rule, the coverage bound) are the
product's own, imported from :mod:`autopack_pipeline.domain.analysis`.
"""
