import io

import numpy as np
import pytest
from helpers import photo
from PIL import Image

from mpq import media, registry


@pytest.mark.parametrize("name,fmt,setting", [("jpeg", "JPEG", 10), ("webp", "WEBP", 30)])
def test_pillow_codec_round_trip_counts_real_bytes(name, fmt, setting):
    img = photo(40, 56)
    codec = registry.get("codec", name)()
    coded = codec.roundtrip(media.Image(img), setting)
    # independently: Pillow called directly with the same settings
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=setting, **({"method": 4} if fmt == "WEBP" else {}))
    assert coded.bits == 8 * len(buf.getvalue())
    assert coded.decoded.pixels.shape == img.shape and coded.decoded.pixels.dtype == np.uint8
    assert np.array_equal(coded.decoded.pixels, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    assert 0 < np.abs(coded.decoded.pixels.astype(int) - img).mean() < 20  # lossy, but close


def test_lower_quality_means_fewer_bits():
    img = photo(64, 64)
    jpeg = registry.get("codec", "jpeg")()
    assert jpeg.roundtrip(media.Image(img), 5).bits < jpeg.roundtrip(media.Image(img), 50).bits


@pytest.mark.slow
@pytest.mark.parametrize("name,family", [("mbt2018", "mbt2018"), ("cheng2020-anchor", "cheng2020_anchor")])
def test_compressai_codec_pads_codes_and_crops_back(name, family):
    import torch
    import torch.nn.functional as F

    img = photo(40, 72)  # neither side a multiple of 64
    cls = registry.get("codec", name)
    codec = cls(cls.Options(pretrained=False))
    coded = codec.roundtrip(media.Image(img), 1)
    assert coded.decoded.pixels.shape == img.shape
    assert "random weights" in codec.pipeline_check and cls().pipeline_check is None
    # independently: the same zoo construction, padded by hand, compressed directly
    from mpq.codecs.learned import load_zoo_model

    net = load_zoo_model(family, 1, "mse", False)  # the loader real weights go through
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = F.pad(x, (0, 128 - 72, 0, 64 - 40), mode="replicate")
    with torch.inference_mode():
        strings = net.compress(x)["strings"]
    assert coded.bits == 8 * sum(len(s[0]) for s in strings)


def test_avif_round_trip_counts_real_bytes():
    img = photo(40, 56)
    coded = registry.get("codec", "avif")().roundtrip(media.Image(img), 30)
    buf = io.BytesIO()  # independently: Pillow called directly with the same settings
    Image.fromarray(img).save(buf, format="AVIF", quality=30, speed=6, subsampling="4:2:0", max_threads=1)
    assert coded.bits == 8 * len(buf.getvalue())
    assert np.array_equal(coded.decoded.pixels, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    assert 0 < np.abs(coded.decoded.pixels.astype(int) - img).mean() < 20
    assert registry.get("codec", "avif")().roundtrip(media.Image(img), 0).bits < coded.bits


def test_jpegxl_round_trip_counts_real_bytes_and_distance_zero_is_lossless():
    import imagecodecs

    img = photo(40, 56)
    codec = registry.get("codec", "jpegxl")()
    coded = codec.roundtrip(media.Image(img), 4)
    data = imagecodecs.jpegxl_encode(img, distance=4.0, effort=7, numthreads=1)
    assert coded.bits == 8 * len(data) and data[:2] == b"\xff\x0a"  # a bare JPEG XL codestream
    assert np.array_equal(coded.decoded.pixels, imagecodecs.jpegxl_decode(data))
    assert 0 < np.abs(coded.decoded.pixels.astype(int) - img).mean() < 20
    assert np.array_equal(codec.roundtrip(media.Image(img), 0).decoded.pixels, img)
    assert codec.roundtrip(media.Image(img), 15).bits < coded.bits
    with pytest.raises(ValueError, match=r"\[0, 25\]"):
        codec.check_setting(30)


def test_gray_input_goes_through_rgb_and_back_and_is_recorded(tmp_path):
    from mpq.engine.stages import Encode, Load
    from mpq.job import resolve
    from mpq.spec import parse_job

    rgb = photo(40, 56)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    job = resolve(parse_job({
        "name": "gray", "datasets": [{"name": "d", "source": {"folder": str(tmp_path)}}],
        "codecs": [{"name": "jpegxl", "settings": [4]}],
    }))
    rows = Encode(job)(Load(job)([
        {"dataset": "d", "sample_id": sid, "units": [("jpegxl", 4, [])]} for sid in ("gray.png", "rgb.png")
    ]))
    gray, color = rows
    direct = registry.get("codec", "jpegxl")().roundtrip(gray["original"], 4).decoded.pixels
    assert not (direct[..., 0] == direct[..., 2]).all()  # the codec's own output drifts off gray
    want = np.asarray(Image.fromarray(direct).convert("L"))  # independently: Pillow's luma
    assert all(np.array_equal(gray["decoded"].pixels[..., c], want) for c in range(3))
    assert gray["conversion"] == "L → RGB; decoded RGB → L (ITU-R 601 luma) → RGB"
    assert color["conversion"] is None and not (color["decoded"].pixels[..., 0] == color["decoded"].pixels[..., 1]).all()


def _skimage_512():
    from skimage import data

    return data.astronaut()  # a 512 × 512 photograph


def test_jpeg_payload_leaves_out_markers_and_tables():
    """Measured: JPEG q5 on a 512² photo, 609 of 8293 bytes are headers and tables."""
    from mpq.codecs.containers import jpeg_payload

    img = _skimage_512()
    coded = registry.get("codec", "jpeg")().roundtrip(media.Image(img), 5)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=5)
    data = buf.getvalue()
    assert coded.bits == 8 * len(data)
    # Independently, for Pillow's baseline JPEG (one scan): the data after the SOS header, up to EOI.
    sos = data.index(b"\xff\xda")
    want = len(data) - (sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")) - 2
    assert jpeg_payload(data) == want and coded.extra["payload_bits"] == 8 * want
    # The figures: 8293 bytes, 609 of them markers and tables before the scan, + 14 the
    # scan header and 2 the end marker.
    assert len(data) == 8293 and len(data) - want == 609 + 14 + 2
    progressive = io.BytesIO()
    Image.fromarray(img).save(progressive, format="JPEG", quality=50, progressive=True)
    p = progressive.getvalue()
    assert 0.8 * len(p) < jpeg_payload(p) < len(p) - 600


def test_webp_and_avif_payloads_are_their_bitstream_chunks():
    img = _skimage_512()
    webp = registry.get("codec", "webp")().roundtrip(media.Image(img), 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="WEBP", quality=0, method=4)
    data = buf.getvalue()
    assert data[12:16] == b"VP8 "  # simple lossy: RIFF header (12) + one chunk header (8) + data (+ pad)
    assert webp.extra["payload_bits"] == 8 * int.from_bytes(data[16:20], "little") and 8 * (len(data) - 21) <= webp.extra["payload_bits"] <= 8 * (len(data) - 20)

    avif = registry.get("codec", "avif")().roundtrip(media.Image(img), 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="AVIF", **registry.get("codec", "avif")().save_kwargs(0))
    data = buf.getvalue()
    at = data.index(b"mdat")
    assert avif.extra["payload_bits"] == 8 * (int.from_bytes(data[at - 4 : at], "big") - 8)
    assert avif.extra["payload_bits"] < avif.bits

    jxl = registry.get("codec", "jpegxl")().roundtrip(media.Image(img), 4)
    assert 0 < jxl.extra["payload_bits"] <= jxl.bits
