"""Batches of labelled images: ingest (validate, canonicalise, split, store) and the catalog."""
