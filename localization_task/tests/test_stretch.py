"""The percentile stretch (--clip_low_pct/--clip_high_pct) is used, saved with the model, and used again."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from localization_task import inference, train
from localization_task.dataset import percentile_clip_to_uint8, to_grey_array
from localization_task.heatmap.data import HeatmapDataset, ItemSettings, pixel_values_from_grey
from localization_task.heatmap.targets import Letterbox, letterbox_image
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.tests.test_train import _argv, _points_by_name

DATA = Path(__file__).parent / "data"
RADIOGRAPHS = ["00000001_000.png", "node21_3_16bit.png"]  # 8-bit and 16-bit
MODEL_CLIP = (10.0, 90.0)  # far from the defaults 0.5 / 99.5


def _pixels(settings: ItemSettings, name: str):
    frame = pd.DataFrame({"path": [str(DATA / name)], "label": [0], "points_px": [np.zeros((0, 2))]})
    return HeatmapDataset(frame, settings)[0]["pixel_values"].numpy()


def test_items_are_stretched_between_the_settings_percentiles():
    default = ItemSettings(64, 4, 1.0, (0.5,) * 3, (0.25,) * 3)
    narrow = ItemSettings(64, 4, 1.0, (0.5,) * 3, (0.25,) * 3, *MODEL_CLIP)
    for name in RADIOGRAPHS:
        with Image.open(DATA / name) as image:
            grey = to_grey_array(image)
        box = Letterbox.for_image(grey.shape[1], grey.shape[0], 64)
        expected = pixel_values_from_grey(letterbox_image(percentile_clip_to_uint8(grey, *MODEL_CLIP), box),
                                          narrow.image_mean, narrow.image_std)[0].numpy()
        np.testing.assert_array_equal(_pixels(narrow, name), expected)
        assert not np.array_equal(_pixels(default, name), expected)


def _model_with_stretch(tiny_encoder, folder: Path) -> Path:
    model = HeatmapLocalizer.from_encoder(tiny_encoder, encoder_mode="full", stride=8, head_channels=8)
    model.config.clip_low_pct, model.config.clip_high_pct = MODEL_CLIP
    model.save_pretrained(folder)
    return folder


def _infer(checkpoint: Path, out: Path, *extra) -> dict:
    argv = ["--input_dir", str(DATA), "--output_dir", str(out), "--backend", "heatmap", "--checkpoint",
            str(checkpoint), "--num_workers", "0", "--min_confidence", "0", *extra]
    assert inference.main(argv) == 0
    return _points_by_name(out / "predictions.jsonl")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.allclose(a[k], b[k]) for k in a)


def test_heatmap_inference_uses_the_models_own_stretch_and_warns_on_another(tiny_encoder, tmp_path, capsys):
    checkpoint = _model_with_stretch(tiny_encoder, tmp_path / "model")
    by_default = _infer(checkpoint, tmp_path / "default")
    assert "warning" not in capsys.readouterr().err
    asked_same = _infer(checkpoint, tmp_path / "same", "--clip_low_pct", "10", "--clip_high_pct", "90")
    asked_other = _infer(checkpoint, tmp_path / "other", "--clip_low_pct", "0.5", "--clip_high_pct", "99.5")
    assert any(len(points) for points in by_default.values())  # confidences to compare
    assert _same(by_default, asked_same)
    assert not _same(by_default, asked_other)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "--clip_low_pct 0.5 (trained with 10)" in warnings[0]
    run_config = json.loads((tmp_path / "default" / inference.RUN_CONFIG_JSON).read_text())
    assert [run_config["config"]["clip_low_pct"], run_config["config"]["clip_high_pct"]] == list(MODEL_CLIP)


def test_training_saves_its_stretch_and_inference_reproduces_its_test_predictions(
        labelled_root, tiny_encoder, tmp_path):
    assert train.main(_argv(labelled_root, tiny_encoder, tmp_path, "--clip_low_pct", "10",
                            "--clip_high_pct", "90")) == 0
    best = tmp_path / "ckpt" / "best_model"
    saved = json.loads((best / "config.json").read_text())
    assert (saved["clip_low_pct"], saved["clip_high_pct"]) == MODEL_CLIP
    argv = ["--input_dir", str(labelled_root), "--recursive", "--output_dir", str(tmp_path / "inferred"),
            "--backend", "heatmap", "--checkpoint", str(best), "--num_workers", "0"]
    assert inference.main(argv) == 0
    from_training = _points_by_name(tmp_path / "out" / "predictions.jsonl")
    from_inference = _points_by_name(tmp_path / "inferred" / "predictions.jsonl")
    assert any(len(points) for points in from_training.values())
    for name, points in from_training.items():
        np.testing.assert_allclose(from_inference[name], points, atol=1e-4, err_msg=name)
