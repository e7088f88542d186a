"""Presets (YAML), installed as package data ``ropelab.presets``: ``--config tiny`` works from any directory."""
