"""Fixtures shared by the classification tests: a tiny saved model and demo data."""

from pathlib import Path

import pytest

from classification_task.tiny_model import TinyModelConfig, save_tiny_medgemma


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init MedGemma-architecture model + processor saved to disk."""
    return save_tiny_medgemma(tmp_path_factory.mktemp("tiny-medgemma"), TinyModelConfig())
