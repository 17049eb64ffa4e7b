"""`python -m reaf.synthetic`: write the synthetic CT-RATE dataset (reaf/synthetic/dataset.py)."""

import sys

from reaf.exit_status import run_cli
from reaf.synthetic.dataset import main

sys.exit(run_cli("python -m reaf.synthetic", main))
