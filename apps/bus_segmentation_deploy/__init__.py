"""MONAI Deploy App SDK application: breast-ultrasound tumour segmentation from a PNG."""

from .app import BUSSegmentationApp

__all__ = ["BUSSegmentationApp"]
