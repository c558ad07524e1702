"""The Localizer interface and its registry: which backends the command offers, and the heatmap behind it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localization_task import localizers
from localization_task.dataset import read_stretched
from localization_task.heatmap.data import HeatmapDataset, ItemSettings
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.heatmap.peaks import iter_peaks
from localization_task.heatmap.predictor import HeatmapPredictor
from localization_task.inference import InferenceConfig, main

PACKAGE = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def test_the_command_offers_the_heatmap_by_default_and_chexagent2(capsys):
    assert localizers.names() == ("heatmap", "chexagent2")
    assert InferenceConfig(input_dir=DATA, checkpoint="best_model").backend == "heatmap"
    with pytest.raises(SystemExit) as exit_info:
        main(["--input_dir", str(DATA), "--backend", "scripted"])  # a test double, not a product backend
    assert exit_info.value.code == 2 and "invalid choice: 'scripted'" in capsys.readouterr().err


def test_a_registered_backend_becomes_a_choice(scripted_backend):
    assert InferenceConfig(input_dir=DATA, backend=scripted_backend).backend == "scripted"


def test_no_product_module_knows_the_test_double():
    product = [path for path in PACKAGE.rglob("*.py") if "tests" not in path.relative_to(PACKAGE).parts]
    assert product
    for path in product:
        text = path.read_text()
        assert "NODULOCC_SCRIPTED" not in text and "Scripted" not in text, path


def test_the_heatmap_predictor_finds_what_the_training_evaluation_finds(labelled_root, tiny_encoder):
    """A batch of images read by inference gives the peaks the split scoring gives, image by image."""
    model = HeatmapLocalizer.from_encoder(tiny_encoder, encoder_mode="full", input_size_px=64,
                                          head_channels=16, stem_channels=8).eval()
    c = model.config
    paths = sorted((labelled_root / "lidc_png_16_bit").iterdir())[:3] + sorted(
        (labelled_root / "nih_filtered_images").iterdir())[:3]  # non-square and square
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": 0, "points_px": [np.zeros((0, 2))] * len(paths)})
    settings = ItemSettings(c.input_size_px, c.stride, 1.0, tuple(c.image_mean), tuple(c.image_std),
                            c.clip_low_pct, c.clip_high_pct)
    (scored,) = iter_peaks(model, HeatmapDataset(frame, settings), batch_size=len(paths), max_points=5)

    images = [localizers.ImageInput(p.name, read_stretched(str(p), c.clip_low_pct, c.clip_high_pct)) for p in paths]
    predictions = HeatmapPredictor(model, min_confidence=0.0, max_points=5).predict(images)
    assert len(predictions) == len(paths)
    for prediction, image, expected in zip(predictions, images, scored["peaks"]):
        expected = expected[~np.isnan(expected[:, 2])]
        found = np.array([[p.x_px, p.y_px, p.confidence] for p in prediction.points]).reshape(-1, 3)
        assert len(found) > 0  # an untrained head still has candidate peaks
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)
        assert prediction.to_record(image.file_name, image.width_px, image.height_px)["points"][0].keys() == {
            "x", "y", "confidence"}
