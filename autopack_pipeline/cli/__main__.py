"""``python -m autopack_pipeline.cli``: the same command as ``autopack-telemetry``."""

import sys

from autopack_pipeline.cli import main

sys.exit(main())
