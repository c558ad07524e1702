"""Pure parser for CheXagent-2 grounding answers: boxes, their keypoints and confidences.

CheXagent-2 answers a grounding prompt with tags in this trained format,
repeated with no separator:

    <|ref|>Nodule/Mass<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>

Coordinates are integers 0-100, a percentage of the ORIGINAL image's width
(x) and height (y): the model squashes every image to 512x512, so the units
are the same for square and non-square images. A negative answer is free text
such as "No nodule/mass detected." and contains no tags.

`prediction_from_response` turns a whole answer (its text, and the probability
of each generated token when the model gives them) into the boxes and
keypoints of an `ImagePrediction`. A keypoint's confidence is the geometric
mean probability of the tokens generated for its box; an answer without token
probabilities gives every keypoint 1.0 (`NO_CONFIDENCE`).

Nothing here needs the tokenizer, torch or the model, so every rule below is
tested on literal strings.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from localization_task.localizers import ImagePrediction, Keypoint

# (label, (x1, y1, x2, y2)) with coordinates in percent of width / height.
LabelledBox = tuple[str, tuple[float, float, float, float]]

# Labels accepted as "nodule" by default, compared case-insensitively. The
# nodule class in CheXagent-2's grounding data is named "Nodule/Mass".
DEFAULT_LABELS: tuple[str, ...] = ("nodule/mass", "nodule", "mass", "lung nodule")
NO_CONFIDENCE = 1.0  # for answers that come without token probabilities

# A ref label or box body never contains "<", so a tag cannot swallow the
# next tag when its own closing tag is missing (truncated output).
_TAG = re.compile(
    r"<\|ref\|>(?P<ref>[^<]*)<\|/ref\|>|<\|box\|>(?P<box>[^<]*)<\|/box\|>"
)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_BODY = re.compile(rf"\s*\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)\s*")


def _clip_pct(value: float) -> float:
    return min(max(value, 0.0), 100.0)


def parse_box_body(body: str) -> tuple[float, float, float, float] | None:
    """`(x1,y1),(x2,y2)` -> normalised (x1, y1, x2, y2), or None if malformed.

    Values are clipped to 0-100 and corners swapped so that x1 <= x2, y1 <= y2.
    """
    match = _BOX_BODY.fullmatch(body)
    if match is None:
        return None
    x1, y1, x2, y2 = (_clip_pct(float(v)) for v in match.groups())
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def parse_boxes(text: str) -> list[LabelledBox]:
    """Every well-formed box in a CheXagent-2 answer, with its ref label.

    - A ref label applies to all boxes that follow it directly (only
      whitespace between), so `<|ref|>X<|/ref|><|box|>..<|/box|><|box|>..<|/box|>`
      gives two boxes labelled X.
    - A box with no ref directly before it gets the label "".
    - Truncated or malformed tags are skipped; trailing special tokens such as
      `</s>` or `<|endoftext|>` and free text are ignored, so a negative answer
      ("No nodule/mass detected.") gives [].
    """
    return [(label, coords) for label, coords, _ in parse_boxes_with_spans(text)]


def parse_boxes_with_spans(text: str) -> list[tuple[str, tuple[float, float, float, float], tuple[int, int]]]:
    """`parse_boxes`, each box with the (start, end) character span of its `<|box|>` tag."""
    boxes = []
    label = ""
    last_end = 0
    for match in _TAG.finditer(text):
        if text[last_end : match.start()].strip():
            label = ""  # free text or a broken tag ends the previous ref
        last_end = match.end()
        if match.group("ref") is not None:
            label = match.group("ref").strip()
            continue
        coords = parse_box_body(match.group("box"))
        if coords is not None:
            boxes.append((label, coords, match.span()))
    return boxes


def span_confidence(pieces: list[str], probs: list[float], span: tuple[int, int]) -> float:
    """Geometric mean probability of the generated tokens that overlap `span`.

    `pieces` are the decoded tokens whose concatenation is the answer text, and
    `probs` the probability the model gave each one when it chose it. A box the
    model was unsure of (any coordinate token of low probability) scores low;
    the geometric mean keeps boxes of different token counts comparable.
    """
    start, end = span
    log_probs, offset = [], 0
    for piece, prob in zip(pieces, probs):
        if offset < end and offset + len(piece) > start:
            log_probs.append(math.log(max(prob, 1e-12)))
        offset += len(piece)
    return math.exp(sum(log_probs) / len(log_probs)) if log_probs else 0.0


def label_accepted(
    label: str, labels: Iterable[str] | None = DEFAULT_LABELS, keep_unlabelled: bool = True
) -> bool:
    """Whether a box label counts as the finding asked for.

    `labels=None` accepts every label. A box without ref (label "") is kept by
    default: the prompt asks for one finding only, so an unlabelled box is the
    model's answer to that question.
    """
    label = label.strip().lower()
    if not label:
        return keep_unlabelled
    if labels is None:
        return True
    return label in {accepted.strip().lower() for accepted in labels}


def box_to_px(
    xyxy_pct: tuple[float, float, float, float], width_px: int, height_px: int
) -> tuple[float, float, float, float]:
    """Percent-of-size corners -> pixel corners of the original image."""
    x1, y1, x2, y2 = xyxy_pct
    return (
        x1 / 100 * width_px,
        y1 / 100 * height_px,
        x2 / 100 * width_px,
        y2 / 100 * height_px,
    )


def box_centre_px(
    xyxy_pct: tuple[float, float, float, float], width_px: int, height_px: int
) -> tuple[float, float]:
    """Keypoint of a box: its centre, cx = (x1 + x2) / 2 / 100 * width."""
    x1, y1, x2, y2 = xyxy_pct
    return (x1 + x2) / 2 / 100 * width_px, (y1 + y2) / 2 / 100 * height_px


# --- whole answers ----------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A generated answer: its text as decoded tokens and each token's probability.

    `"".join(pieces)` is the text; `probs` is None when the model gave none.
    """

    pieces: list[str]
    probs: list[float] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class DetectedBox:
    label: str
    xyxy_pct: tuple[float, float, float, float]  # model units: % of width / height
    xyxy_px: tuple[float, float, float, float]  # original pixels
    kept: bool  # passed the label filter, so its centre is a keypoint
    confidence: float  # geometric mean probability of the box's tokens (1.0 without them)


def prediction_from_response(
    response: str | Answer,
    width_px: int,
    height_px: int,
    labels: Sequence[str] | None = DEFAULT_LABELS,
    keep_unlabelled: bool = True,
) -> ImagePrediction:
    """Raw grounding answer -> boxes and keypoints (box centres) in pixels.

    Each box's confidence comes from the probabilities of its generated
    tokens when the answer carries them. A box repeated with identical
    coordinates yields one keypoint (the same box cannot be two nodules), with
    the highest confidence among the repeats.
    """
    answer = response if isinstance(response, Answer) else Answer([response])
    prediction = ImagePrediction(answer.text)
    kept_points: dict[tuple[float, float, float, float], int] = {}
    for label, xyxy_pct, span in parse_boxes_with_spans(answer.text):
        kept = label_accepted(label, labels, keep_unlabelled)
        confidence = NO_CONFIDENCE if answer.probs is None else span_confidence(answer.pieces, answer.probs, span)
        xyxy_px = box_to_px(xyxy_pct, width_px, height_px)
        prediction.boxes.append(DetectedBox(label, xyxy_pct, xyxy_px, kept, confidence))
        if not kept:
            continue
        if xyxy_pct in kept_points:
            index = kept_points[xyxy_pct]
            earlier = prediction.points[index]
            prediction.points[index] = Keypoint(earlier.x_px, earlier.y_px, max(earlier.confidence, confidence))
            continue
        kept_points[xyxy_pct] = len(prediction.points)
        x_px, y_px = box_centre_px(xyxy_pct, width_px, height_px)
        prediction.points.append(Keypoint(x_px, y_px, confidence))
    return prediction
