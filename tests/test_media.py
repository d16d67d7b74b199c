import numpy as np
import pytest
from helpers import photo

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
    assert isinstance(rgb, Sample) and rgb.media.conversion is None and rgb.target == "cats"
    for sid, note in [("cats/gray.png", "L → RGB"), ("cats/rgba.png", "alpha composited on white"),
                      ("dogs/cmyk.jpg", "CMYK → RGB"), ("dogs/sixteen.png", "16-bit")]:
        s = got[sid]
        assert isinstance(s, Sample), sid
        assert s.media.pixels.dtype == np.uint8 and s.media.pixels.shape == rgb.media.pixels.shape
        assert note in s.media.conversion
    gray = got["cats/gray.png"].media.pixels
    assert np.array_equal(gray[..., 0], gray[..., 2])
    # 16-bit v*257 scaled back by >> 8 gives v exactly
    assert np.array_equal(got["dogs/sixteen.png"].media.pixels[..., 0], rgb.media.pixels[..., 0])


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


def test_media_types_size_rate_and_post_decode_by_hand():
    from mpq.media import GRAY_BACK, Audio, Image, audio_from_array

    pixels = photo(4, 8)
    image = Image(pixels)
    assert image.size() == {"height": 4, "width": 8}
    assert image.rate(64) == {"bpp": 2.0}  # 64 bits over 32 pixels
    gray = Image(np.repeat(pixels[..., :1], 3, axis=2))
    decoded, note = gray.after_decode(image)  # a gray input's coded version is made gray again
    assert note == GRAY_BACK and (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()
    assert image.after_decode(gray) == (gray, None)
    clip = audio_from_array(np.zeros((48_000, 2), np.float32), 48_000)  # one second, stereo
    assert clip.size() == {"sample_rate": 48_000, "channels": 2, "num_samples": 48_000, "duration": 1.0}
    assert clip.rate(96_000) == {"bps": 1.0, "kbps": 96.0}
    assert (Image.name, Image.rates, Audio.name, Audio.rates) == ("image", ("bpp",), "audio", ("bps", "kbps"))


def test_an_image_holds_rgb_bytes_only():
    from mpq.media import Image

    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)):
        with pytest.raises(MediaError, match=r"\(H, W, 3\) uint8"):
            Image(bad)


def test_each_media_type_bounds_its_own_size():
    from mpq.media import Image, audio_from_array
    from mpq.spec import parse_job

    limits = parse_job({"name": "bounds", "datasets": [{"name": "m", "source": {"music": "synthetic"}}], "max_pixels": 300, "max_seconds": 2})
    assert Image(photo(20, 16)).too_large(limits) == "16×20 = 320 pixels, over the job's max_pixels (300)"
    assert Image(photo(15, 20)).too_large(limits) is None
    assert audio_from_array(np.zeros(26_000, np.float32), 10_000).too_large(limits) == "3 s, over the job's max_seconds (2)"
    assert audio_from_array(np.zeros(20_000, np.float32), 10_000).too_large(limits) is None
    assert Image(photo(100, 100)).too_large(parse_job({**limits.model_dump(exclude_none=True), "max_pixels": None})) is None


def test_media_round_trip_their_arrow_form_exactly():
    """Images and audio through their Arrow struct (as the cache and the Ray engine store them,
    through a real Arrow array): the same type, bytes and fields."""
    import pyarrow as pa

    from mpq.media import ARROW, Audio, Image, Media, audio_from_array

    image = Image(photo(5, 7), "L → RGB", 6)
    clip = audio_from_array(np.random.default_rng(0).uniform(-1, 1, (300, 2)), 16_000, "resampled")
    stored = pa.array([image.to_arrow(), clip.to_arrow()], type=ARROW)
    back_image, back_clip = (Media.from_arrow(v) for v in stored.to_pylist())
    assert isinstance(back_image, Image) and np.array_equal(back_image.pixels, image.pixels)
    assert (back_image.conversion, back_image.orientation) == ("L → RGB", 6)
    assert isinstance(back_clip, Audio) and back_clip.samples.dtype == np.float32
    assert np.array_equal(back_clip.samples, clip.samples) and (back_clip.sample_rate, back_clip.conversion) == (16_000, "resampled")
    back_image.pixels[0, 0] = 0  # writable, as media are
    assert back_image.digest() == Image(back_image.pixels.copy()).digest() != image.digest()
    with pytest.raises(MediaError, match="unknown media kind"):
        Media.from_arrow({**image.to_arrow(), "kind": "video"})
