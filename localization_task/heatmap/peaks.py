"""Peak decoding: heatmaps -> keypoints in original pixels, for training, evaluation and inference.

A peak is a local maximum of a probability heatmap, refined to sub-cell
precision (`refine_peak`); `peaks_to_original` maps peaks back through the
image's letterbox (see targets.py) to its original pixels. `peaks_tensor`
keeps every candidate above `CANDIDATE_FLOOR` as a fixed-size tensor, so that
batches can be gathered across processes and any threshold applied later.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from localization_task.heatmap.data import box_from_tensor, collate
from localization_task.heatmap.targets import Letterbox, heatmap_to_input
from localization_task.localizers import Keypoint

_LOG_FLOOR = 1e-12  # keeps log() finite where a heatmap is exactly zero
CANDIDATE_FLOOR = 0.05  # peaks below this never count, whatever the threshold


class Peak(NamedTuple):
    x_hm: float
    y_hm: float
    confidence: float


def _parabola_offset(left: float, centre: float, right: float) -> float:
    """Sub-cell offset of a peak from three samples, by a parabola through their logs.

    The log of a Gaussian is a parabola, so a Gaussian peak is recovered
    exactly; anything flatter than a strict maximum stays at the cell.
    """
    log_l, log_c, log_r = np.log(np.maximum([left, centre, right], _LOG_FLOOR))
    curvature = log_l - 2.0 * log_c + log_r
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (log_l - log_r) / curvature, -0.5, 0.5))


def refine_peak(heatmap: np.ndarray, col: int, row: int) -> tuple[float, float]:
    """Sub-cell (x, y) of the local maximum at (col, row) of a 2-D heatmap."""
    height, width = heatmap.shape
    x, y = float(col), float(row)
    if 0 < col < width - 1:
        x += _parabola_offset(*heatmap[row, col - 1 : col + 2])
    if 0 < row < height - 1:
        y += _parabola_offset(*heatmap[row - 1 : row + 2, col])
    return x, y


def _as_batch(heatmap_prob) -> torch.Tensor:
    heatmaps = torch.as_tensor(heatmap_prob).detach().float().cpu()
    if heatmaps.ndim == 2:
        return heatmaps[None, None]
    if heatmaps.ndim == 4 and heatmaps.shape[1] == 1:
        return heatmaps
    raise ValueError(f"expected a (B, 1, H, W) or (H, W) heatmap, got shape {tuple(heatmaps.shape)}.")


def decode_peaks(
    heatmap_prob, max_points: int = 5, min_confidence: float = 0.3, nms_kernel: int = 3
) -> list[list[Peak]]:
    """Peaks of probability heatmaps, one list per image, strongest first.

    `heatmap_prob` is (B, 1, H, W) or one (H, W) map (then a one-item list is
    returned). A peak is a cell equal to the maximum of its nms_kernel x
    nms_kernel neighbourhood and at least `min_confidence`; its confidence is
    its value and its position is refined to sub-cell precision.
    """
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be a positive odd number, got {nms_kernel}.")
    if max_points < 0:
        raise ValueError(f"max_points must be at least 0, got {max_points}.")
    heatmaps = _as_batch(heatmap_prob)
    pooled = F.max_pool2d(heatmaps, nms_kernel, stride=1, padding=nms_kernel // 2)
    is_peak = (heatmaps == pooled) & (heatmaps >= min_confidence)
    results = []
    for heatmap, peaks_mask in zip(heatmaps[:, 0].numpy(), is_peak[:, 0].numpy()):
        rows, cols = np.nonzero(peaks_mask)
        values = heatmap[rows, cols]
        order = np.argsort(-values, kind="stable")[:max_points]
        results.append(
            [Peak(*refine_peak(heatmap, cols[i], rows[i]), float(values[i])) for i in order]
        )
    return results


def peaks_to_original(peaks: list[Peak], box: Letterbox, stride: int) -> list[Keypoint]:
    """Heatmap peaks of one image -> keypoints in its original pixels.

    Peaks in the padding are dropped (they are not on the image); the others
    are clipped to the image, as a border peak may refine a little past it.
    """
    if not peaks:
        return []
    xy_in = heatmap_to_input([(p.x_hm, p.y_hm) for p in peaks], box.input_size_px, stride)
    keep = box.in_image(xy_in)
    xy_px = box.to_original(xy_in)
    xy_px = np.clip(xy_px, 0.0, [box.width_px - 1, box.height_px - 1])
    return [
        Keypoint(float(x), float(y), peak.confidence)
        for (x, y), peak, kept in zip(xy_px, peaks, keep)
        if kept
    ]


def peaks_tensor(logits: torch.Tensor, boxes: torch.Tensor, stride: int, max_points: int) -> torch.Tensor:
    """(B, max_points, 3) candidate peaks (x, y, confidence) in original pixels, NaN-padded."""
    out = torch.full((logits.shape[0], max_points, 3), float("nan"), dtype=torch.float32)
    peaks = decode_peaks(torch.sigmoid(logits.float()), max_points=max_points, min_confidence=CANDIDATE_FLOOR)
    for row, (image_peaks, box) in enumerate(zip(peaks, boxes.cpu())):
        keypoints = peaks_to_original(image_peaks, box_from_tensor(box), stride)
        if keypoints:
            rows = [[k.x_px, k.y_px, k.confidence] for k in keypoints]
            out[row, : len(keypoints)] = torch.tensor(rows, dtype=torch.float32)
    return out.to(logits.device)


@torch.no_grad()
def batch_peaks(model, pixel_values: torch.Tensor, boxes: torch.Tensor, max_points: int) -> np.ndarray:
    """One forward pass of a batch on the model's device: (B, max_points, 3) candidate peaks, NaN-padded."""
    model.eval()
    device = next(model.parameters()).device
    # bf16 autocast on a GPU, as in training; plain fp32 on the CPU.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(pixel_values.to(device))
    return peaks_tensor(logits, boxes, model.config.stride, max_points).cpu().numpy()


def iter_peaks(model, dataset, batch_size: int, max_points: int, num_workers: int = 0,
               desc: str = "scoring") -> Iterator[dict]:
    """Run the model over `dataset` batch by batch: indices, peaks, boxes and unreadable items.

    One process, no Trainer: used for the final scoring of a split.
    """
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    with tqdm(total=len(dataset), desc=desc, unit="img") as progress:
        for batch in loader:
            result = {"skipped": batch.get("skipped", []), "index": batch["index"].numpy()}
            if len(result["index"]):
                result["peaks"] = batch_peaks(model, batch["pixel_values"], batch["box"], max_points)
                result["box"] = batch["box"].numpy()
            yield result
            progress.update(len(result["index"]) + len(result["skipped"]))
