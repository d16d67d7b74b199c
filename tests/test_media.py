import numpy as np
import pytest

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
