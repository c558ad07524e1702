"""Fixtures: a small labelled data root, a tiny encoder, and `--backend scripted` for one test."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localization_task import localizers
from localization_task.demo.tiny_encoder import build_tiny_dinov2
from localization_task.tests import scripted_localizer


def write_labelled_root(root: Path, n_patients: int = 30, seed: int = 0) -> Path:
    """NoduLoCC layout: 8-bit NIH-named and 16-bit non-square LIDC images, bright blobs as nodules.

    Per patient two images; about half the patients have nodules, and a third
    of the nodule images have no keypoints (weak positives).
    """
    rng = np.random.default_rng(seed)
    (root / "nih_filtered_images").mkdir(parents=True)
    (root / "lidc_png_16_bit").mkdir()
    labels, points = ["file_name,label,LIDC_ID"], ["file_name,x,y"]
    for patient in range(n_patients):
        for follow_up in range(2):
            lidc = patient % 5 == 4
            name = f"LIDC-IDRI-{patient:04d}_{follow_up}.png" if lidc else f"{patient:08d}_{follow_up:03d}.png"
            width, height = (120, 100) if lidc else (96, 96)
            image = rng.normal(0.3, 0.03, (height, width))
            nodule = patient % 2 == 0
            centres = [(rng.uniform(20, width - 20), rng.uniform(20, height - 20)) for _ in range(1 + follow_up)]
            yy, xx = np.mgrid[0:height, 0:width]
            for cx, cy in centres if nodule else []:
                image += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))
            if lidc:
                pixels = (20000 + np.clip(image, 0, 1) * 3000).astype(np.uint16)
                Image.fromarray(pixels).save(root / "lidc_png_16_bit" / name)
            else:
                Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(root / "nih_filtered_images" / name)
            labels.append(f"{name},{'Nodule' if nodule else 'No Finding'},{f'LIDC-IDRI-{patient:04d}' if lidc else ''}")
            if nodule and patient % 3 != 0:  # the others are nodule images without keypoints
                points += [f"{name},{cx:.2f},{cy:.2f}" for cx, cy in centres]
    (root / "classification_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "localization_labels.csv").write_text("\n".join(points) + "\n")
    return root


@pytest.fixture(scope="session")
def labelled_root(tmp_path_factory) -> Path:
    return write_labelled_root(tmp_path_factory.mktemp("loc_data") / "root")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2") / "encoder", input_size_px=64, patch_size=8)


@pytest.fixture
def scripted_backend(monkeypatch) -> str:
    """`--backend scripted` (the CheXagent-2 stand-in of scripted_localizer.py) for this test only."""
    monkeypatch.setitem(localizers.BACKENDS, scripted_localizer.NAME, scripted_localizer.REGISTERED)
    return scripted_localizer.NAME
