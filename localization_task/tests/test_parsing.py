"""The CheXagent-2 answer parser and box -> pixel geometry, on literal strings."""
import math

import pytest

from localization_task.chexagent2.parsing import (
    NO_CONFIDENCE,
    Answer,
    box_centre_px,
    box_to_px,
    label_accepted,
    parse_box_body,
    parse_boxes,
    parse_boxes_with_spans,
    prediction_from_response,
    span_confidence,
)

NODULE = "<|ref|>Nodule/Mass<|/ref|>"


def test_single_box_in_trained_format():
    text = "<|ref|>Nodule/Mass<|/ref|><|box|>(12,30),(20,38)<|/box|>"
    assert parse_boxes(text) == [("Nodule/Mass", (12.0, 30.0, 20.0, 38.0))]


def test_several_refs_without_separator():
    text = (
        "<|ref|>Nodule/Mass<|/ref|><|box|>(12,30),(20,38)<|/box|>"
        "<|ref|>Nodule/Mass<|/ref|><|box|>(60,40),(70,52)<|/box|>"
    )
    assert parse_boxes(text) == [
        ("Nodule/Mass", (12.0, 30.0, 20.0, 38.0)),
        ("Nodule/Mass", (60.0, 40.0, 70.0, 52.0)),
    ]


def test_several_boxes_under_one_ref_share_its_label():
    text = f"{NODULE}<|box|>(1,2),(3,4)<|/box|><|box|>(5,6),(7,8)<|/box|> <|box|>(9,9),(10,10)<|/box|>"
    assert [label for label, _ in parse_boxes(text)] == ["Nodule/Mass"] * 3


def test_box_without_ref_has_empty_label():
    assert parse_boxes("<|box|>(40,50),(44,56)<|/box|>") == [("", (40.0, 50.0, 44.0, 56.0))]


def test_free_text_between_ref_and_box_drops_the_label():
    text = f"{NODULE}<|box|>(1,2),(3,4)<|/box|> and also <|box|>(5,6),(7,8)<|/box|>"
    assert [label for label, _ in parse_boxes(text)] == ["Nodule/Mass", ""]


def test_swapped_corners_are_normalised():
    assert parse_boxes(f"{NODULE}<|box|>(70,80),(60,50)<|/box|>") == [
        ("Nodule/Mass", (60.0, 50.0, 70.0, 80.0))
    ]


def test_whitespace_is_tolerated():
    text = "<|ref|> Nodule/Mass <|/ref|>\n<|box|>( 12 , 30 ) , ( 20 ,38 )<|/box|>\n"
    assert parse_boxes(text) == [("Nodule/Mass", (12.0, 30.0, 20.0, 38.0))]


def test_out_of_range_values_are_clipped():
    assert parse_boxes("<|box|>(-5,30),(120,101)<|/box|>") == [("", (0.0, 30.0, 100.0, 100.0))]


@pytest.mark.parametrize(
    "text",
    [
        "No nodule/mass detected.",
        "No nodule/mass detected.<|endoftext|>",
        "",
        f"{NODULE}<|box|>(12,30),(20",  # truncated: generation stopped mid-box
        f"{NODULE}<|box|>(12,30),(20,38)",  # closing tag missing
        "<|box|>(12,30)<|/box|>",  # one corner only
        "<|box|>(a,b),(c,d)<|/box|>",
        "<|box|>(1,2),(3,4),(5,6)<|/box|>",
        "<|ref|>Nodule/Mass<|/ref|>",  # ref without a box
    ],
)
def test_negative_truncated_and_malformed_answers_give_no_box(text):
    assert parse_boxes(text) == []


def test_malformed_box_is_skipped_but_later_boxes_are_kept():
    text = f"{NODULE}<|box|>(12,30),(2<|/box|><|box|>(5,6),(7,8)<|/box|>"
    assert parse_boxes(text) == [("Nodule/Mass", (5.0, 6.0, 7.0, 8.0))]


def test_truncated_tag_does_not_swallow_the_next_box():
    text = "<|ref|>Nodule/Mass<|box|>(5,6),(7,8)<|/box|>"
    assert parse_boxes(text) == [("", (5.0, 6.0, 7.0, 8.0))]


@pytest.mark.parametrize("tail", ["</s>", "<|endoftext|>", "<|endoftext|><|endoftext|>", "<|im_end|>"])
def test_trailing_special_tokens_are_ignored(tail):
    assert parse_boxes(f"{NODULE}<|box|>(12,30),(20,38)<|/box|>{tail}") == [
        ("Nodule/Mass", (12.0, 30.0, 20.0, 38.0))
    ]


def test_decimal_coordinates_are_accepted():
    assert parse_box_body("(12.5,30),(20,38.25)") == (12.5, 30.0, 20.0, 38.25)


@pytest.mark.parametrize("label", ["Nodule/Mass", "nodule/mass", "NODULE", "Mass", "lung nodule", " Nodule "])
def test_default_labels_accept_nodule_names_case_insensitively(label):
    assert label_accepted(label)


@pytest.mark.parametrize("label", ["Cardiomegaly", "Pleural Effusion", "nodules"])
def test_default_labels_reject_other_findings(label):
    assert not label_accepted(label)


def test_unlabelled_and_any_label_options():
    assert label_accepted("")
    assert not label_accepted("", keep_unlabelled=False)
    assert label_accepted("Cardiomegaly", labels=None)
    assert label_accepted("opacity", labels=["Opacity"])


def test_centre_and_pixels_use_original_width_and_height():
    box = (10.0, 20.0, 30.0, 60.0)
    width_px, height_px = 2000, 1000  # non-square
    assert box_centre_px(box, width_px, height_px) == pytest.approx((400.0, 400.0))
    assert box_to_px(box, width_px, height_px) == pytest.approx((200.0, 200.0, 600.0, 600.0))
    assert box_centre_px(box, 1000, 2000) == pytest.approx((200.0, 800.0))


def test_prediction_from_response_keeps_nodules_as_box_centres():
    text = (
        "<|ref|>Cardiomegaly<|/ref|><|box|>(30,50),(70,80)<|/box|>"
        f"{NODULE}<|box|>(10,20),(30,60)<|/box|><|box|>(10,20),(30,60)<|/box|><|endoftext|>"
    )
    prediction = prediction_from_response(text, 2022, 1011)
    assert prediction.response == text
    assert [box.kept for box in prediction.boxes] == [False, True, True]
    assert prediction.boxes[1].xyxy_px == pytest.approx((202.2, 202.2, 606.6, 606.6))
    assert len(prediction.points) == 1  # the repeated identical box counts once
    point = prediction.points[0]
    assert (point.x_px, point.y_px) == pytest.approx((404.4, 404.4))
    assert point.confidence == NO_CONFIDENCE == 1.0


def test_prediction_from_negative_answer_is_empty():
    prediction = prediction_from_response("No nodule/mass detected.", 512, 512)
    assert prediction.boxes == [] and prediction.points == []


def test_box_spans_cover_their_box_tag():
    text = f"{NODULE}<|box|>(10,20),(30,60)<|/box|>free text<|box|>(1,2),(3,4)<|/box|>"
    spans = [span for _, _, span in parse_boxes_with_spans(text)]
    assert [text[a:b] for a, b in spans] == ["<|box|>(10,20),(30,60)<|/box|>", "<|box|>(1,2),(3,4)<|/box|>"]
    assert [(label, xyxy) for label, xyxy, _ in parse_boxes_with_spans(text)] == parse_boxes(text)


def test_span_confidence_is_the_geometric_mean_of_overlapping_tokens():
    pieces = ["<|box|>", "(", "10", ",", "20", ")", "<|/box|>", "tail"]
    probs = [1.0, 1.0, 0.5, 1.0, 0.125, 1.0, 1.0, 0.01]
    span = (0, sum(len(p) for p in pieces[:7]))
    expected = math.exp((math.log(0.5) + math.log(0.125)) / 7)
    assert span_confidence(pieces, probs, span) == pytest.approx(expected)
    assert span_confidence(pieces, probs, (len("<|box|>("), len("<|box|>(10"))) == pytest.approx(0.5)
    assert span_confidence(pieces, probs, (1000, 1010)) == 0.0  # no token there


def test_prediction_confidence_comes_from_token_probabilities():
    box = "<|box|>(10,20),(30,60)<|/box|>"
    sure, unsure = Answer([NODULE, box], [0.9, 0.8]), Answer([NODULE, box], [0.9, 0.2])
    assert prediction_from_response(sure, 100, 100).points[0].confidence == pytest.approx(0.8)
    assert prediction_from_response(unsure, 100, 100).points[0].confidence == pytest.approx(0.2)
    repeated = Answer([NODULE, box, box], [0.9, 0.3, 0.6])  # one keypoint, its best confidence
    assert [p.confidence for p in prediction_from_response(repeated, 100, 100).points] == pytest.approx([0.6])
