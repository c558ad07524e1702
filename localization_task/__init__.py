"""Nodule keypoint localization on chest radiographs."""
