import numpy as np
import pytest
from conftest import photo

from mpq.components import Sample
from mpq.media import MediaError, image_from_bytes
from mpq.registry import get


def load_all(folder):
    src = get("source", "folder")(get("source", "folder").Options(folder=str(folder), labels="parent"))
    out = {}
    for sid in src.ids():
        try:
            out[sid] = src.load(sid)
        except MediaError as exc:
            out[sid] = exc
    return out


def test_odd_modes_are_converted_and_recorded(odd_folder):
    got = load_all(odd_folder)
    rgb = got["cats/rgb.png"]
    assert isinstance(rgb, Sample) and rgb.conversion is None and rgb.target == "cats"
    for sid, note in [("cats/gray.png", "L → RGB"), ("cats/rgba.png", "alpha composited on white"),
                      ("dogs/cmyk.jpg", "CMYK → RGB"), ("dogs/sixteen.png", "16-bit")]:
        s = got[sid]
        assert isinstance(s, Sample), sid
        assert s.media.dtype == np.uint8 and s.media.shape == rgb.media.shape
        assert note in s.conversion
    gray = got["cats/gray.png"].media
    assert np.array_equal(gray[..., 0], gray[..., 2])
    # 16-bit v*257 scaled back by >> 8 gives v exactly
    assert np.array_equal(got["dogs/sixteen.png"].media[..., 0], rgb.media[..., 0])


def test_corrupt_and_truncated_files_raise_media_errors(odd_folder):
    got = load_all(odd_folder)
    assert isinstance(got["dogs/truncated.jpg"], MediaError)
    assert isinstance(got["dogs/corrupt.png"], MediaError)
    with pytest.raises(MediaError, match="not a readable image"):
        image_from_bytes(b"")


def test_exif_orientation_is_applied_as_the_datasets_library_does():
    """`datasets`' image feature applies exif_transpose; mpq's own decoders must too, so a photo
    reaches the model upright whatever the source."""
    import io

    import datasets
    from PIL import Image

    from mpq.media import image_from_bytes

    img = Image.fromarray(photo(48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    data = buf.getvalue()
    got = image_from_bytes(data)
    want = np.asarray(datasets.Image().decode_example({"bytes": data, "path": None}).convert("RGB"))
    assert got.pixels.shape == (64, 48, 3) and np.array_equal(got.pixels, want)
    assert "EXIF orientation 6" in got.conversion
    plain = io.BytesIO()
    img.save(plain, format="JPEG", quality=95)
    assert image_from_bytes(plain.getvalue()).conversion is None


def test_modalities_size_rate_and_post_decode_by_hand():
    from mpq.media import GRAY_BACK, MODALITIES, audio_from_array

    image, audio = MODALITIES["image"], MODALITIES["audio"]
    pixels = photo(4, 8)
    assert image.size(pixels) == {"height": 4, "width": 8}
    assert image.rate(pixels, 64) == {"bpp": 2.0}  # 64 bits over 32 pixels
    gray = np.repeat(pixels[..., :1], 3, axis=2)
    decoded, note = image.after_decode(gray, pixels)  # a gray input's coded version is made gray again
    assert note == GRAY_BACK and (decoded[..., 0] == decoded[..., 2]).all()
    assert image.after_decode(pixels, gray) == (gray, None)
    clip = audio_from_array(np.zeros((48_000, 2), np.float32), 48_000)  # one second, stereo
    assert audio.size(clip) == {"sample_rate": 48_000, "channels": 2, "num_samples": 48_000, "duration": 1.0}
    assert (image.rates, audio.rates) == (("bpp",), ("bps", "kbps"))


def test_each_modality_bounds_its_own_size():
    from mpq.media import MODALITIES
    from mpq.spec import parse_job

    limits = parse_job({"name": "bounds", "datasets": [{"name": "m", "source": {"music": "synthetic"}}], "max_pixels": 300, "max_seconds": 2})
    image, audio = MODALITIES["image"], MODALITIES["audio"]
    assert image.too_large({"height": 20, "width": 16}, limits) == "16×20 = 320 pixels, over the job's max_pixels (300)"
    assert image.too_large({"height": 15, "width": 20}, limits) is None
    assert audio.too_large({"duration": 2.6}, limits) == "3 s, over the job's max_seconds (2)"
    assert audio.too_large({"duration": 2.0}, limits) is None
    assert image.too_large({"height": 10**4, "width": 10**4}, parse_job({**limits.model_dump(exclude_none=True), "max_pixels": None})) is None
