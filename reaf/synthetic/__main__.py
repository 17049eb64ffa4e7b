"""`python -m reaf.synthetic`: write the synthetic CT-RATE dataset (reaf/synthetic/dataset.py)."""

from reaf.synthetic.dataset import main

main()
