"""The synthetic CT-RATE: chest phantoms with planted findings, reports and metadata (`python -m reaf.synthetic`)."""
