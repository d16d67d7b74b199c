"""The OCR task with the PP-OCRv4 models that rapidocr-onnxruntime ships, on the rendered
text source: clean lines are read almost perfectly, harsher JPEG costs characters, and the
character accuracy is the one jiwer's CER gives."""

import jiwer
import numpy as np
import polars as pl
import pydantic
import pytest

from mpq import registry
from mpq.sources.text import SENTENCES, RenderedText
from mpq.tasks.ocr import OCR, char_accuracy, char_errors


@pytest.fixture(scope="module")
def ocr():
    task = OCR(OCR.Options())
    task.load()
    return task


def pages(count):
    source = RenderedText(RenderedText.Options(text="rendered", count=count))
    return [source.load(i) for i in source.ids()]


@pytest.fixture(scope="module")
def clean(ocr):
    """The first 12 pages and the task's rows on them, uncompressed (both tests below read them)."""
    samples = pages(12)
    return samples, ocr.predict([s.media for s in samples], [s.target for s in samples])


def split_accuracy(task, media, targets) -> float:
    return OCR.aggregate(pl.DataFrame(task.predict(media, targets)))["char_accuracy"]


@pytest.mark.slow
def test_clean_rendered_lines_are_read_almost_perfectly(ocr, clean):
    # Measured: 0.997 over the first 24 pages (0.956 counting spaces, 88 % read exactly), 0.996 over these 12.
    _, rows = clean
    scores = OCR.aggregate(pl.DataFrame(rows))
    assert scores["char_accuracy"] >= 0.97, scores
    assert scores["exact_match"] >= 0.5, scores
    assert ocr.model_id == "builtin:ppocr-v4" and ocr.model_revision.startswith("rapidocr-onnxruntime ")


@pytest.mark.slow
def test_harsher_jpeg_costs_characters(ocr, clean):
    # Measured over these 8 pages: 0.998 clean, 0.34 at quality 5 and 0.93 at quality 20.
    samples, rows = clean[0][:8], clean[1][:8]  # the task reads a page the same alone or among others
    jpeg = registry.get("codec", "jpeg")()
    targets = [s.target for s in samples]
    by_quality = {q: split_accuracy(ocr, [jpeg.roundtrip(s.media, q).decoded for s in samples], targets) for q in (5, 20)}
    clean = OCR.aggregate(pl.DataFrame(rows))["char_accuracy"]
    assert by_quality[5] < by_quality[20] - 0.1 and by_quality[20] <= clean, (by_quality, clean)


def test_char_errors_are_jiwers_levenshtein_distance():
    for ref, hyp in [("kitten", "sitting"), ("Thebirchcanoe", "Thebichcanoe."), ("abc", "xyz"), ("ab", "abcdefgh")]:
        errors, chars = char_errors(ref, hyp)
        assert chars == len(ref) and errors == pytest.approx(jiwer.cer(ref, hyp) * len(ref))
    assert char_errors("kitten", "sitting") == (3, 6)  # k→s, e→i, +g
    assert char_errors("abc", "") == (3, 3) and char_errors("", "ab") == (2, 0)


def test_aggregate_sums_errors_over_the_split():
    rows = pl.DataFrame({
        "correct": [False, True, False], "char_errors": [2, 0, 9], "ref_chars": [10, 20, 4],
        "char_errors_spaced": [3, 1, 9], "ref_chars_spaced": [12, 23, 5], "agreement": [0.5, 1.0, None],
    })
    scores = OCR.aggregate(rows)
    assert scores["char_accuracy"] == pytest.approx(1 - 11 / 34)  # not the mean of per-sample accuracies
    assert scores["char_accuracy_spaced"] == pytest.approx(1 - 13 / 40)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["agreement"] == pytest.approx(0.75)
    assert OCR.aggregate(rows.with_columns(char_errors=pl.Series([50, 0, 0])))["char_accuracy"] == 0.0  # CER over 1
    unlabelled = OCR.aggregate(pl.DataFrame({"correct": [None], "agreement": [1.0]}, schema={"correct": pl.Boolean, "agreement": pl.Float64}))
    assert unlabelled["char_accuracy"] is None and unlabelled["exact_match"] is None


def test_agreement_is_a_character_accuracy_in_0_1():
    task = OCR(OCR.Options())
    agree = lambda coded, clean: task.agreement({"prediction": coded}, {"prediction": clean})["agreement"]  # noqa: E731
    assert agree("The birch canoe", "Thebirch canoe") == 1.0  # whitespace aside
    assert agree("The birch cane", "The birch canoe") == pytest.approx(1 - 1 / 13)
    assert agree("a much longer text than the reference", "ab") == 0.0  # CER over 1 is clipped
    assert task.agreement({"prediction": "a much longer text"}, {"prediction": "ab"})["cer_vs_clean"] == 14 / 2  # kept raw: 1 substitution, 13 insertions
    assert agree("", "") == 1.0 and agree("", "abc") == 0.0 and agree("abc", "") == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = ("".join(rng.choice(list("ab c"), rng.integers(0, 8))) for _ in range(2))
        assert 0.0 <= agree(a, b) <= 1.0
    assert char_accuracy(0, 0) == 1.0 and char_accuracy(3, 0) == 0.0


def test_rendered_pages_are_deterministic_and_labelled_with_their_text():
    a, b = pages(30), pages(30)
    assert all(np.array_equal(x.media.pixels, y.media.pixels) and x.target == y.target for x, y in zip(a, b))
    page_lines = [s.target.split("\n") for s in a]
    assert all(any(f" {line} " in f" {sentence} " for sentence in SENTENCES) for page in page_lines for line in page)
    assert {len(page) for page in page_lines} == {1, 2, 3}
    assert all(s.media.pixels.shape[0] >= 96 and s.media.pixels.shape[1] >= 320 for s in a)


def test_bad_options_and_ids_say_what_is_valid():
    with pytest.raises(pydantic.ValidationError, match="builtin:ppocr-v4"):
        OCR.Options(model="builtin:tesseract")
    with pytest.raises(ValueError, match="page-0000..page-0002"):
        RenderedText(RenderedText.Options(text="rendered", count=3)).load("page-0007")
