"""`python -m ratchet.stages.X WORKSPACE`: the dvc.yaml stages; the retrain flow calls the same `run`."""
