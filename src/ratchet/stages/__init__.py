"""The dvc.yaml stages, `python -m ratchet.stages.X PATH...` from the workspace root; dvc.yaml names
every path, and the retrain flow calls the same `run` with the paths it reads from there."""
