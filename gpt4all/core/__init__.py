"""Shared core: config, manifests, tracking, metrics and model loading. Stages import only from here."""
