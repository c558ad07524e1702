"""Synthetic chest-radiograph data in the NoduLoCC folder layout.

Writes a small, seeded stand-in for the challenge data so that training,
inference and the tests run end to end without the real images:

    python classification_task/demo/synthetic.py --out data/demo [--n_images 300] [--size_px 256] \
        [--positive_rate 0.3] [--lidc_fraction 0.25] [--nodule_radius_frac 0.08] [--seed 0] \
        [--difficulty easy|hard] [--keypoint_fraction 1.0] [--overwrite]

Layout (same as the real data root):
    classification_labels.csv   file_name,label,LIDC_ID
    localization_labels.csv     file_name,x,y  (blob centres, original pixels)
    nih_filtered_images/        8-bit grey PNGs PPPPPPPP_FFF.png (a few RGBA
                                or non-square, several follow-ups per patient)
    lidc_png_16_bit/            16-bit PNGs LIDC-IDRI-NNNN_K.png, 1.25x larger,
                                values in a ~3000-wide window around 20000-30000

Nodules are bright soft-edged discs in the lung fields, large enough (radius
~6-10 % of the width) to survive downsizing to 112 px: a tiny model stays at
chance on faint 2-4 px blobs but learns a large disc within tens of steps.
Brightness, contrast and the 16-bit window are drawn independently of the
label: within a source the blob is the only cue.

`--difficulty hard` (for localization): small faint nodules (radius ~3 % of the
width) and bright look-alike streaks in every image's lungs, so a localizer must
learn round blobs, not "anything bright". `--keypoint_fraction`: only that share
of the nodule images keeps its keypoints, like the real positives.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

if not __package__:  # run as a file path (python <task>/demo/synthetic.py): import as the package module
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = f"{Path(__file__).resolve().parents[1].name}.demo"

from ..common import cli  # noqa: E402

NIH_DIR = "nih_filtered_images"
LIDC_DIR = "lidc_png_16_bit"
CLASS_CSV = "classification_labels.csv"
LOC_CSV = "localization_labels.csv"
LIDC_SCALE = 1.25  # real LIDC PNGs are ~2022 px against NIH's 1024
LIDC_WINDOW = 3000  # width of the occupied slice of the 16-bit range
EASY_AMPLITUDE = (0.35, 0.5)  # nodule brightness over the background
HARD_RADIUS_SCALE = 0.4  # hard nodules: 0.4 x --nodule_radius_frac
HARD_AMPLITUDE = (0.14, 0.22)  # hard nodules and streaks alike


@dataclass
class SyntheticConfig:
    out_dir: str = cli.arg("data/demo", "output folder", flag="out")
    n_images: int = cli.arg(300, "number of images")
    positive_rate: float = cli.arg(0.3, "fraction of Nodule images (exact count = round(n * rate))")
    size_px: int = cli.arg(256, "NIH image side; LIDC is 1.25x")
    lidc_fraction: float = cli.arg(0.25, "fraction of LIDC-style 16-bit images")
    nodule_radius_frac: float = cli.arg(0.08, "mean nodule radius as a fraction of image width (jittered +-25 %)")
    difficulty: Literal["easy", "hard"] = cli.arg(
        "easy", "hard: small faint nodules and bright look-alike streaks (a localization test)")
    keypoint_fraction: float = cli.arg(1.0, "share of nodule images whose keypoints are written")
    seed: int = cli.arg(0, "seed of every random draw")
    overwrite: bool = cli.arg(False, "replace a non-empty --out")

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ValueError("--out must name an output folder.")
        if self.n_images < 1:
            raise ValueError(f"--n_images must be at least 1, got {self.n_images}.")
        for name in ("positive_rate", "lidc_fraction", "keypoint_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 32 <= self.size_px <= 4096:
            raise ValueError(f"--size_px must be in [32, 4096], got {self.size_px}.")
        if self.difficulty not in ("easy", "hard"):
            raise ValueError(f"--difficulty must be easy or hard, got {self.difficulty!r}.")
        if not 0.01 <= self.nodule_radius_frac <= 0.15:  # above ~0.15 a nodule leaves the lung field
            raise ValueError(f"--nodule_radius_frac must be in [0.01, 0.15], got {self.nodule_radius_frac}.")


@dataclass(frozen=True)
class _ImageSpec:
    file_name: str
    patient: int  # index into the per-patient anatomy draws
    positive: bool
    width_px: int
    height_px: int
    lidc_id: str = ""  # empty for NIH rows, as in the real CSV
    rgba: bool = False


# ---------------------------------------------------------------- the plan


def _group_sizes(n: int, max_per_patient: int, rng: np.random.Generator) -> list[int]:
    """Split n images into patients with 1..max_per_patient images each."""
    sizes: list[int] = []
    if n == 0:
        return sizes
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, max_per_patient + 1)))
    sizes[-1] -= sum(sizes) - n
    return sizes


def _split_positives(config: SyntheticConfig, n_nih: int, n_lidc: int) -> tuple[int, int]:
    """Positives per source: LIDC is positive-heavy like the real keypoint set."""
    n_pos = round(config.n_images * config.positive_rate)
    wanted_lidc = round(n_lidc * min(1.0, 2 * config.positive_rate))
    n_pos_lidc = int(np.clip(wanted_lidc, max(0, n_pos - n_nih), min(n_pos, n_lidc)))
    return n_pos - n_pos_lidc, n_pos_lidc


def _plan(config: SyntheticConfig, rng: np.random.Generator) -> tuple[list[_ImageSpec], int]:
    """Decide every file name, label, size and patient before drawing pixels."""
    n_lidc = round(config.n_images * config.lidc_fraction)
    n_nih = config.n_images - n_lidc
    n_pos_nih, n_pos_lidc = _split_positives(config, n_nih, n_lidc)
    size, lidc_size = config.size_px, round(config.size_px * LIDC_SCALE)

    # A few odd NIH files (RGBA, non-square) so loaders meet them in tests.
    n_odd = max(1, round(0.03 * n_nih)) if n_nih >= 10 else 0
    order = rng.permutation(n_nih)
    rgba, non_square = set(order[:n_odd].tolist()), set(order[n_odd : 2 * n_odd].tolist())
    nih_pos = set(rng.choice(n_nih, n_pos_nih, replace=False).tolist())
    lidc_pos = set(rng.choice(n_lidc, n_pos_lidc, replace=False).tolist())

    specs: list[_ImageSpec] = []
    nih_sizes = _group_sizes(n_nih, 4, rng)
    patient_ids = 1 + np.cumsum(rng.integers(1, 40, len(nih_sizes)))
    for patient, (pid, count) in enumerate(zip(patient_ids, nih_sizes)):
        for follow_up in range(count):
            i = len(specs)
            height = size - size // 16 if i in non_square else size
            specs.append(_ImageSpec(f"{pid:08d}_{follow_up:03d}.png", patient,
                                    i in nih_pos, size, height, rgba=i in rgba))
    lidc_sizes = _group_sizes(n_lidc, 3, rng)
    lidc_numbers = np.cumsum(rng.integers(1, 4, len(lidc_sizes)))
    for k, (number, count) in enumerate(zip(lidc_numbers, lidc_sizes)):
        lidc_id = f"LIDC-IDRI-{number:04d}"
        for j in range(count):
            i = len(specs) - n_nih
            specs.append(_ImageSpec(f"{lidc_id}_{j + 1}.png", len(nih_sizes) + k,
                                    i in lidc_pos, lidc_size, lidc_size, lidc_id=lidc_id))
    return specs, len(nih_sizes) + len(lidc_sizes)


# ------------------------------------------------------------ the pixels


def _anatomy(rng: np.random.Generator) -> dict[str, float]:
    """Body shape of one patient, in coordinates normalised to [-1, 1]."""
    return {
        "lung_cx": rng.uniform(0.36, 0.44), "lung_cy": rng.uniform(-0.12, 0.0),
        "lung_ax": rng.uniform(0.27, 0.33), "lung_ay": rng.uniform(0.52, 0.62),
        "lung_tilt": rng.uniform(0.05, 0.2), "body_ax": rng.uniform(0.86, 0.98),
        "heart_cx": rng.uniform(0.1, 0.2), "heart_ax": rng.uniform(0.3, 0.38),
        "spine_w": rng.uniform(0.09, 0.13), "rib_freq": rng.uniform(4.0, 5.5),
        "rib_phase": rng.uniform(0.0, 1.0), "rib_bend": rng.uniform(0.6, 1.0),
    }


def _soft_inside(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside an ellipse (d < 1), 0 outside, with a sigmoid rim of width edge."""
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / edge, -50, 50)))


def _lung_distance(x: np.ndarray, y: np.ndarray, a: dict[str, float], side: int) -> np.ndarray:
    """Normalised ellipse radius of one lung; side -1 is image left, +1 right."""
    dx, dy = x - side * a["lung_cx"], y - a["lung_cy"]
    cos, sin = np.cos(side * a["lung_tilt"]), np.sin(side * a["lung_tilt"])
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((u / a["lung_ax"]) ** 2 + (v / a["lung_ay"]) ** 2)


def _smooth_noise(n_cells: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance random n_cells x n_cells grid, upsampled smoothly to h x w."""
    coarse = rng.normal(0.0, 1.0, (n_cells, n_cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _background(h: int, w: int, a: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Chest-like attenuation map in [0, 1]: air, soft tissue, lungs, spine, heart, ribs.

    Everything here is smooth, so it is drawn at half resolution and upsampled:
    this is most of the generator's run time.
    """
    h_full, w_full = h, w
    h, w = max(8, h // 2), max(8, w // 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (x + 0.5) / w * 2 - 1, (y + 0.5) / h * 2 - 1
    body = _soft_inside(np.sqrt((x / a["body_ax"]) ** 2 + ((y - 0.1) / 1.15) ** 2), 0.04)
    lungs = np.maximum(_soft_inside(_lung_distance(x, y, a, -1), 0.06),
                       _soft_inside(_lung_distance(x, y, a, +1), 0.06))
    spine = np.exp(-((x / a["spine_w"]) ** 2)) * body
    heart = _soft_inside(np.hypot((x - a["heart_cx"]) / a["heart_ax"], (y - 0.36) / 0.26), 0.15)
    # Posterior ribs: thin bands that curve down towards the sides of the chest,
    # the two sides a little out of step as in a slightly rotated patient.
    rib_arg = (a["rib_freq"] * (y - a["rib_bend"] * (np.abs(x) - 0.1) ** 2)
               + a["rib_phase"] + 0.15 * (x > 0))
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_arg)) ** 6 * lungs
    # Exposure unevenness (coarse grid) and vessel-like lung texture (finer grid).
    low_freq = _smooth_noise(6, h, w, rng)
    texture = _smooth_noise(max(8, w // 8), h, w, rng) * lungs
    # The heart fills the lower medial lung with soft tissue instead of air.
    img = (0.08 + 0.42 * body + 0.1 * body * np.clip(y, 0, 1)
           - 0.32 * lungs * (1 - 0.75 * heart) + 0.15 * spine + 0.04 * heart
           + 0.05 * ribs + 0.03 * low_freq + 0.025 * texture)
    img = Image.fromarray(img.astype(np.float32)).resize((w_full, h_full), Image.BICUBIC)
    return np.array(img, dtype=np.float32)


def _nodule_centres(a: dict[str, float], h: int, w: int, radius_px: np.ndarray,
                    rng: np.random.Generator) -> list[tuple[float, float]]:
    """Blob centres (x, y) in pixels inside the lung fields, not overlapping each other."""
    centres: list[tuple[float, float]] = []
    sides = rng.permutation([-1, 1])
    for k, r in enumerate(radius_px):
        for _ in range(50):  # rejection sampling; a free spot is found almost at once
            side = sides[k % 2] if rng.random() < 0.7 else -sides[k % 2]
            u, theta = 0.6 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            du, dv = u * a["lung_ax"] * np.cos(theta), u * a["lung_ay"] * np.sin(theta)
            cos, sin = np.cos(side * a["lung_tilt"]), np.sin(side * a["lung_tilt"])
            xn = side * a["lung_cx"] + cos * du - sin * dv
            yn = a["lung_cy"] + sin * du + cos * dv
            cx, cy = (xn + 1) / 2 * w - 0.5, (yn + 1) / 2 * h - 0.5
            if all(np.hypot(cx - px, cy - py) > 1.1 * (r + pr)
                   for (px, py), pr in zip(centres, radius_px)):
                break
        centres.append((float(cx), float(cy)))
    return centres


def _streaks(a: dict[str, float], h: int, w: int, radius_px: float, rng: np.random.Generator,
             xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """1-3 thin bright streaks in the lungs (vessel- or scar-like), as bright as hard nodules."""
    n_streaks = int(rng.integers(1, 4))
    out = np.zeros((h, w), dtype=np.float32)
    for cx, cy in _nodule_centres(a, h, w, np.full(n_streaks, radius_px), rng):
        theta = rng.uniform(0, np.pi)
        half_length, half_width = radius_px * rng.uniform(2.0, 3.5), radius_px * rng.uniform(0.25, 0.4)
        along = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        across = (yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)
        profile = np.exp(-0.5 * (across / half_width) ** 2) * _soft_inside(np.abs(along) / half_length, 0.3)
        out += rng.uniform(*HARD_AMPLITUDE) * profile
    return out


def _render(spec: _ImageSpec, anatomy: dict[str, float], config: SyntheticConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One image as floats in [0, 1] plus its keypoints (empty for negatives)."""
    h, w = spec.height_px, spec.width_px
    # Follow-ups of one patient share anatomy up to a few per cent of jitter.
    a = {k: v * rng.uniform(0.97, 1.03) for k, v in anatomy.items()}
    img = _background(h, w, a, rng)
    centres: list[tuple[float, float]] = []
    hard = config.difficulty == "hard"
    radius_frac = config.nodule_radius_frac * (HARD_RADIUS_SCALE if hard else 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if spec.positive:
        n_nodules = 2 if rng.random() < 0.4 else 1
        radius_px = radius_frac * w * rng.uniform(0.75, 1.25, n_nodules)
        centres = _nodule_centres(a, h, w, radius_px, rng)
        for (cx, cy), r in zip(centres, radius_px):
            dist = np.hypot(xx - cx, yy - cy) / r
            img += rng.uniform(*(HARD_AMPLITUDE if hard else EASY_AMPLITUDE)) * _soft_inside(dist, 0.15)
    if hard:
        img += _streaks(a, h, w, radius_frac * w, rng, xx, yy)
    # Exposure and noise are drawn the same way for both classes: no global cue.
    contrast, brightness = rng.uniform(0.8, 1.15), rng.uniform(-0.07, 0.07)
    img = (img - 0.4) * contrast + 0.4 + brightness
    img += rng.normal(0.0, rng.uniform(0.012, 0.025), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0), centres


def _save(spec: _ImageSpec, img: np.ndarray, folder: Path, rng: np.random.Generator) -> None:
    """NIH: 8-bit grey (or RGBA); LIDC: 16-bit in a narrow, per-image window."""
    if spec.lidc_id:
        low = rng.uniform(20000, 27000)
        pixels = np.round(low + img * LIDC_WINDOW).astype(np.uint16)
        Image.fromarray(pixels).save(folder / LIDC_DIR / spec.file_name, compress_level=1)  # I;16
        return
    grey = np.round(img * 255).astype(np.uint8)
    if spec.rgba:
        opaque = np.full_like(grey, 255)
        grey = np.dstack([grey, grey, grey, opaque])
    # Level 1: noisy images barely compress further, and level 6 triples run time.
    Image.fromarray(grey).save(folder / NIH_DIR / spec.file_name, compress_level=1)


# ------------------------------------------------------------ the folder


def _write_dataset(folder: Path, config: SyntheticConfig) -> tuple[list[_ImageSpec], int, int]:
    """Write images and both CSVs into folder; returns specs, patients, keypoints."""
    specs, n_patients = _plan(config, np.random.default_rng([config.seed, 0]))
    (folder / NIH_DIR).mkdir()
    (folder / LIDC_DIR).mkdir()
    keypoints: list[tuple[str, float, float]] = []
    anatomies: dict[int, dict[str, float]] = {}
    # Its own generator: which images keep keypoints never changes any pixel.
    annotated = np.random.default_rng([config.seed, 3]).random(len(specs)) < config.keypoint_fraction
    for i, spec in enumerate(specs):
        if spec.patient not in anatomies:
            anatomies[spec.patient] = _anatomy(np.random.default_rng([config.seed, 1, spec.patient]))
        # One generator per image: an image's pixels do not depend on the others.
        rng = np.random.default_rng([config.seed, 2, i])
        img, centres = _render(spec, anatomies[spec.patient], config, rng)
        _save(spec, img, folder, rng)
        if annotated[i]:
            keypoints += [(spec.file_name, x, y) for x, y in centres]
    with open(folder / CLASS_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", "label", "LIDC_ID"])
        for spec in sorted(specs, key=lambda s: s.file_name):
            writer.writerow([spec.file_name, "Nodule" if spec.positive else "No Finding", spec.lidc_id])
    with open(folder / LOC_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", "x", "y"])
        writer.writerows((name, f"{x:.2f}", f"{y:.2f}") for name, x, y in sorted(keypoints))
    return specs, n_patients, len(keypoints)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output path {out} is a file; choose a folder for --out.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"Output folder {out} already exists and is not empty; "
            "pass --overwrite to replace it or choose another --out."
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished temp folder in, so --out is never half written."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def generate(config: SyntheticConfig) -> dict:
    """Write the synthetic data set described by config; return a summary dict."""
    start = time.perf_counter()
    out = Path(config.out_dir)
    _check_target(out, config.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        specs, n_patients, n_keypoints = _write_dataset(tmp, config)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful move
    n_lidc = sum(bool(s.lidc_id) for s in specs)
    return {
        "out_dir": str(out), "n_images": len(specs),
        "n_positive": sum(s.positive for s in specs), "n_keypoints": n_keypoints,
        "n_nih": len(specs) - n_lidc, "n_lidc": n_lidc, "n_patients": n_patients,
        "n_rgba": sum(s.rgba for s in specs),
        "n_non_square": sum(s.width_px != s.height_px for s in specs),
        "seconds": round(time.perf_counter() - start, 3),
    }


def generate_dataset(out_dir: str | os.PathLike, **kwargs) -> dict:
    """generate() with keyword arguments, e.g. generate_dataset("data/demo", n_images=60)."""
    return generate(SyntheticConfig(out_dir=str(out_dir), **kwargs))


# ------------------------------------------------------------ the command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(SyntheticConfig, __doc__, argv)
    if config is None:
        return 2
    try:
        summary = generate(config)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: could not write {config.out_dir}: {err.strerror or err}.", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
