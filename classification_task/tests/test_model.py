"""The answer position and the two answer logits, with left and right padding; the scoring loop."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from classification_task.model import (
    AnswerRows,
    PromptCollator,
    answer_logits,
    answer_positions,
    answer_token_ids,
    p_nodule_from_logits,
    score_batches,
)


def _examples(n=3):
    rng = np.random.default_rng(0)
    return [{"image": Image.fromarray(rng.integers(0, 255, (64 + 16 * i, 80, 3), dtype=np.uint8)), "label": i % 2}
            for i in range(n)]


def test_answer_positions_for_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert answer_positions(left).tolist() == [4, 4, 4]
    assert answer_positions(right).tolist() == [2, 4, 0]


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    return (AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval(),
            AutoProcessor.from_pretrained(tiny_model_dir))


def test_answer_logits_equal_the_full_logits_at_the_last_prompt_token(model_and_processor):
    model, processor = model_and_processor
    ids = answer_token_ids(processor.tokenizer)
    batch = PromptCollator(processor)(_examples())
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        two = answer_logits(model, batch, ids)
    assert two.shape == (3, 2)
    assert torch.allclose(two, full[:, -1, ids], atol=1e-5)


def test_the_answer_rows_give_a_row_the_same_logits_wherever_it_sits_in_the_batch():
    """MKL's float32 GEMM on an AVX-512 CPU changes a row's last digits with its position when the
    product has two columns and a narrow hidden size, as the tiny model's 64."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 1, 64, generator=generator)
    rows, bias = torch.randn(2, 64, generator=generator), torch.randn(2, generator=generator)
    logits = AnswerRows(rows, bias)(hidden)
    assert logits.shape == (5, 1, 2)
    torch.testing.assert_close(logits, hidden @ rows.T + bias)
    for shift in range(1, 5):
        order = torch.roll(torch.arange(5), shift)
        assert torch.equal(AnswerRows(rows, bias)(hidden[order]), logits[order])


def test_right_padding_with_different_lengths_gives_the_same_p_nodule(model_and_processor):
    """Rows of different lengths: the answer sits at a different index in each row."""
    model, processor = model_and_processor
    ids = answer_token_ids(processor.tokenizer)
    examples = _examples(3)
    collator = PromptCollator(processor)
    texts = [collator.text, collator.text.replace("Look at", "Please look closely at"), collator.text]
    expected = []
    with torch.no_grad():
        for text, example in zip(texts, examples):
            single = processor(text=[text], images=[[example["image"]]], return_tensors="pt")
            expected.append(p_nodule_from_logits(answer_logits(model, dict(single), ids))[0])
        for side in ("left", "right"):
            processor.tokenizer.padding_side = side
            batch = processor(text=texts, images=[[e["image"]] for e in examples], return_tensors="pt",
                              padding=True)
            if side == "right":
                assert (batch["attention_mask"][:, -1] == 0).any()
            got = p_nodule_from_logits(answer_logits(model, dict(batch), ids))
            np.testing.assert_allclose(got, expected, atol=1e-5)
    processor.tokenizer.padding_side = "left"


def test_multi_token_answer_letters_are_refused():
    class SplittingTokenizer:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="single-token"):
        answer_token_ids(SplittingTokenizer())


def test_prompt_starts_with_a_single_bos(tiny_model_dir):
    """The chat template writes <bos>; the tokenizer must not add a second one."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    bos = processor.tokenizer.bos_token_id
    assert processor.tokenizer.encode("A")[0] == bos  # it adds <bos> itself, like the real Gemma 3 tokenizer
    batch = PromptCollator(processor)(_examples(2))
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert real[0] == bos and real.count(bos) == 1


def test_the_scoring_loop_passes_unreadable_images_on_as_skipped(model_and_processor):
    model, processor = model_and_processor
    images = [example["image"] for example in _examples(3)]
    items = [{"file_name": "a.png", "image": images[0]}, {"file_name": "bad.png", "image": None, "error": "OSError: x"},
             {"file_name": "c.png", "image": images[1]}, {"file_name": "d.png", "image": images[2]}]
    batches = list(score_batches(model, processor, items, batch_size=2))
    assert [names for names, _, _ in batches] == [["a.png"], ["c.png", "d.png"]]
    assert [skipped for _, _, skipped in batches] == [[("bad.png", "OSError: x")], []]
    every = [p for _, p, _ in score_batches(model, processor, [{"image": image} for image in images], batch_size=3)]
    np.testing.assert_allclose(np.concatenate([p_nodule for _, p_nodule, _ in batches]), every[0], atol=1e-5)


def test_a_score_does_not_depend_on_the_batch_it_is_in(model_and_processor):
    """On the CPU a row's logits change in their last digits with the number of rows in the forward
    pass; a partial batch (the last one, or one with unreadable images) is padded to full size, so
    a resumed or shared run, which batches the images differently, gives the same bytes."""
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).convert("RGB") for _ in range(8)]
    items = [{"file_name": f"{i}.png", "image": image} for i, image in enumerate(images)]
    bad = {"file_name": "bad.png", "image": None, "error": "OSError: x"}

    def scores(order: list[dict]) -> dict[str, float]:
        batches = score_batches(model, processor, order, batch_size=3)
        return {name: float(p) for names, p_nodule, _ in batches for name, p in zip(names, p_nodule)}

    full_batches = scores(items + [items[0]])  # batches of 3
    assert scores(items) == full_batches  # 3, 3, 2
    assert scores([x for item in reversed(items) for x in (item, bad)]) == full_batches  # 2, 1, 2, ...
    assert scores([bad, bad, *items]) == full_batches  # 1, 3, 3, 1
