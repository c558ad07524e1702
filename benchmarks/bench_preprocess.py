"""Pre-processing speed: decode + percentile clip + resize to 896 px, ours vs plain np.percentile,
then the training data loader's images/s with 0, 2 and 4 workers, with and without --cache_dir.

    python -m benchmarks.bench_preprocess [--n_images 6] [--loader_images 32] [--out PATH]

Inputs are synthesised in a temporary folder: 16-bit 2022 x 2022 PNGs using a
narrow part of the range (like the LIDC images) and 8-bit 1024 x 1024 PNGs (like
the NIH ones). Ours is `classification_task.dataset.load_image` (exact
percentiles from the pixels beyond a sampled bound); the plain version
partitions every pixel with `np.percentile`. Both must give identical images.
Each time is the best of several calls (5 for the percentile step, 2 for the
whole pipeline). The loader is the one training uses: RadiographDataset
(pre-processing at 896 px) and the prompt collator with a processor at the
MedGemma resolution (896 px, 256 image tokens), batches of 4.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import REFERENCE_TRAIN_SAMPLES_PER_S, format_table, machine_line, write_record
from classification_task.common import cli
from classification_task.dataset import Preprocessing, RadiographDataset, clip_bounds, load_image, read_grey
from classification_task.model import PromptCollator
from classification_task.demo.tiny_model import TinyModelConfig, build_processor

PREP = Preprocessing(0.5, 99.5, 896)


@dataclass
class PreprocessConfig:
    n_images: int = cli.arg(6, "images of each kind for the percentile comparison")
    loader_images: int = cli.arg(32, "8-bit images the data loader reads per pass")
    workers: str = cli.arg("0,2,4", "data-loader worker counts to try, comma-separated")
    out: str = cli.arg("outputs/benchmarks/preprocess.json", "JSON record of the run")

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.loader_images < 1:
            raise ValueError("--n_images and --loader_images must be at least 1.")
        self.worker_counts  # validates

    @property
    def worker_counts(self) -> list[int]:
        try:
            return [int(w) for w in self.workers.split(",")]
        except ValueError:
            raise ValueError("--workers must be integers separated by commas, e.g. 0,2,4.") from None


def synthetic_radiograph(rng, side_px: int, bits: int) -> np.ndarray:
    """A smooth chest-like gradient plus noise; 16-bit images use only ~3,000 of 65,536 levels."""
    y, x = np.mgrid[0:side_px, 0:side_px] / side_px
    body = np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 6) + 0.3 * np.sin(12 * x) * (y > 0.2)
    noisy = body + rng.normal(0, 0.05, size=body.shape)
    if bits == 16:
        return (20000 + 2500 * noisy).clip(0, 65535).astype(np.uint16)
    return (40 + 150 * noisy).clip(0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, side_px: int, bits: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"{bits}bit_{i:03d}.png")
        Image.fromarray(synthetic_radiograph(rng, side_px, bits)).save(paths[-1])
    return paths


def plain_load_image(path: Path, prep: Preprocessing = PREP) -> Image.Image:
    """The obvious implementation: np.percentile sorts (partitions) all pixels."""
    pixels = read_grey(path)
    low, high = (float(v) for v in np.percentile(pixels, (prep.clip_low_pct, prep.clip_high_pct)))
    scaled = (np.clip(pixels.astype(np.float32), low, high) - low) * (255.0 / (high - low))
    grey = Image.fromarray(np.rint(scaled).astype(np.uint8))
    return grey.resize((prep.size_px, prep.size_px), Image.Resampling.BILINEAR).convert("RGB")


def seconds(function, *args, repeats: int = 5) -> float:
    """The best of `repeats` calls: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def compare_percentiles(paths: list[Path], kind: str) -> dict:
    """Per image kind: whole pipeline and percentile step, ours vs plain; asserts identical outputs."""
    times = {key: 0.0 for key in ("decode", "ours_pct", "plain_pct", "ours_total", "plain_total")}
    for path in paths:
        pixels = read_grey(path)
        times["decode"] += seconds(read_grey, path)
        times["ours_pct"] += seconds(clip_bounds, pixels, PREP.clip_low_pct, PREP.clip_high_pct)
        times["plain_pct"] += seconds(np.percentile, pixels, (PREP.clip_low_pct, PREP.clip_high_pct))
        assert list(clip_bounds(pixels, 0.5, 99.5)) == [float(v) for v in np.percentile(pixels, (0.5, 99.5))]
        times["ours_total"] += seconds(load_image, path, PREP, repeats=2)
        times["plain_total"] += seconds(plain_load_image, path, repeats=2)
        assert np.array_equal(np.asarray(load_image(path, PREP)), np.asarray(plain_load_image(path)))
    n = len(paths)
    return {"images": kind, "n": n, "decode_ms": 1000 * times["decode"] / n,
            "pct_ours_ms": 1000 * times["ours_pct"] / n, "pct_plain_ms": 1000 * times["plain_pct"] / n,
            "pct_ratio": times["plain_pct"] / times["ours_pct"],
            "ours_img_per_s": n / times["ours_total"], "plain_img_per_s": n / times["plain_total"]}


def loader_pass(frame: pd.DataFrame, collator, workers: int, cache_dir: Path | None) -> float:
    """Images per second through the training DataLoader, batches of 4."""
    dataset = RadiographDataset(frame, PREP, str(cache_dir) if cache_dir else None)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collator, num_workers=workers)
    start = time.perf_counter()
    n = sum(len(batch["labels"]) for batch in loader)
    return n / (time.perf_counter() - start)


def loader_rows(paths: list[Path], workers: list[int], tmp: Path) -> list[dict]:
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": [i % 2 for i in range(len(paths))]})
    processor = build_processor(TinyModelConfig(image_size_px=896, image_tokens=256))
    collator = PromptCollator(processor)
    rows = []
    for count in workers:
        cache = tmp / f"cache_{count}"
        row = {"workers": count, "no_cache_img_per_s": loader_pass(frame, collator, count, None),
               "cache_filling_img_per_s": loader_pass(frame, collator, count, cache),
               "cache_warm_img_per_s": loader_pass(frame, collator, count, cache)}
        rows.append(row)
        shutil.rmtree(cache)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(PreprocessConfig, __doc__, argv)
    if config is None:
        return 2
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sixteen = write_images(tmp, config.n_images, 2022, 16, seed=0)
        eight = write_images(tmp, max(config.n_images, config.loader_images), 1024, 8, seed=1)
        percentile_rows = [compare_percentiles(sixteen, "16-bit 2022 px"),
                           compare_percentiles(eight[: config.n_images], "8-bit 1024 px")]
        loader = loader_rows(eight[: config.loader_images], config.worker_counts, tmp)
    ours_s = sum(row["pct_ours_ms"] * row["n"] for row in percentile_rows)
    plain_s = sum(row["pct_plain_ms"] * row["n"] for row in percentile_rows)
    print("decode + percentile clip + resize to 896 px, per image (outputs identical):")
    print(format_table(percentile_rows, ["images", "n", "decode_ms", "pct_ours_ms", "pct_plain_ms", "pct_ratio",
                                         "ours_img_per_s", "plain_img_per_s"]))
    print(f"training data loader, {config.loader_images} 8-bit images, batches of 4, 896 px "
          f"(the reference run consumed ~{REFERENCE_TRAIN_SAMPLES_PER_S:.2f} samples/s on its GPU):")
    print(format_table(loader, ["workers", "no_cache_img_per_s", "cache_filling_img_per_s", "cache_warm_img_per_s"]))
    headline = (f"percentile step, all {sum(r['n'] for r in percentile_rows)} images: ours {ours_s:.1f} ms, "
                f"np.percentile {plain_s:.1f} ms: {plain_s / ours_s:.1f}x faster")
    path = write_record(config.out, config, {"percentiles": percentile_rows, "loader": loader}, headline)
    print(f"record: {path}")
    print(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
