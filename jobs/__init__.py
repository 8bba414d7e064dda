"""Entrypoints and experiment configs (configs/*.yaml) for the detector job."""
