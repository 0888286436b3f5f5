"""Ignite trainers (``monai.engines`` subclasses) and handlers for each busmonai stage."""
