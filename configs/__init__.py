"""Experiment configs: one `get_config()` per file; every default lives here."""
