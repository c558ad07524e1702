"""Fixtures shared by the classification tests: tiny saved models and demo data."""

from pathlib import Path

import pytest

from classification_task.demo.tiny_model import TinyModelConfig, save_tiny_dinov2, save_tiny_medgemma


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init MedGemma-architecture model + processor saved to disk."""
    return save_tiny_medgemma(tmp_path_factory.mktemp("tiny-medgemma"), TinyModelConfig())


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory) -> Path:
    """A random-init Dinov2 (56 px, patch 8) + image processor config saved to disk, as microsoft/rad-dino is."""
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))
