"""Evaluation metrics of generated breast-ultrasound images (``busmonai evaluate ...``).

- :mod:`busmonai.metrics.fid`: FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) on the
  standard 2015 InceptionV3 pool features (:mod:`busmonai.metrics.inception`, offline, cached).
- :mod:`busmonai.metrics.adherence`: Dice between conditioning masks and segmentations of the
  generated images (a segmenter, or a documented training-free fallback).
- :mod:`busmonai.metrics.fidelity`: AUC of a classifier on generated images with their
  intended labels (Mann-Whitney rank formula).
- :mod:`busmonai.metrics.curvature_stats`: boundary-curvature statistics of masks per class.
- :mod:`busmonai.metrics.sources`: image sets from folders or datalists, networks from checkpoints.

Submodules are imported on demand (``torch`` and ``scipy`` are heavy).
"""

from __future__ import annotations
