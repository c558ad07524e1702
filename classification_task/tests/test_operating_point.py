"""The operating point saved beside a trained model: written atomically, read back, refused when damaged."""

import pytest

from classification_task.evaluation.operating_point import (
    OPERATING_POINT_JSON,
    read_operating_point,
    write_operating_point,
)

OPERATING_POINT = {"model_kind": "medgemma_lora", "base_model": "google/medgemma-1.5-4b-it", "quantization": "nf4",
                   "preprocessing": {"clip_low_pct": 0.5, "clip_high_pct": 99.5, "image_size_px": None},
                   "thresholds": {"max_f1": 0.42, "spec_0.99": 0.9}, "default_threshold": "max_f1"}


def test_operating_point_round_trips_and_is_written_atomically(tmp_path):
    assert read_operating_point(tmp_path) is None and read_operating_point(None) is None
    path = write_operating_point(tmp_path, OPERATING_POINT)
    assert path == tmp_path / OPERATING_POINT_JSON
    assert read_operating_point(tmp_path) == OPERATING_POINT
    assert sorted(p.name for p in tmp_path.iterdir()) == [OPERATING_POINT_JSON]  # no temporary file left
    with pytest.raises(ValueError, match="thresholds"):
        write_operating_point(tmp_path, {key: value for key, value in OPERATING_POINT.items() if key != "thresholds"})
    assert read_operating_point(tmp_path) == OPERATING_POINT  # a refused record leaves the file as it was


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"thresholds": 0.5}'])
def test_a_damaged_operating_point_is_one_sentence_naming_the_file(tmp_path, text):
    (tmp_path / OPERATING_POINT_JSON).write_text(text)
    with pytest.raises(ValueError, match="operating_point.json .*; delete it to use the defaults") as raised:
        read_operating_point(tmp_path)
    assert str(tmp_path) in str(raised.value) and "\n" not in str(raised.value)
