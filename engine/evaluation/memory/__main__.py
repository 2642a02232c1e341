"""``python -m engine.evaluation.memory``: the memory report's command (``report.main``)."""
import sys

from .report import main

sys.exit(main())
