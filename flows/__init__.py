"""Prefect flows (installed as `ratchet.flows`): they sequence calls into ratchet and hold no ML."""
