"""Ingest, embed, select and export: the curation half of the toolkit (no CLI imports here)."""
