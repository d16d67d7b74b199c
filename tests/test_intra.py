"""HEVC and AV1 intra stills: bits and pixels against an independent encode, odd and tiny
sizes, the direction of the QP, the payload inside the stream."""

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import photo

from mpq import media, registry

X265 = "qp={qp}:ipratio=1:keyint=1:pools=none:frame-threads=1:info=0:log-level=error"
CASES = [  # codec, its options, encoder, raw-stream format, decoder, pixel format, encoder options
    ("hevc", {}, "libx265", "hevc", "hevc", "yuv444p", lambda qp: {"preset": "medium", "x265-params": X265.format(qp=qp)}),
    ("hevc", {"chroma": "420"}, "libx265", "hevc", "hevc", "yuv420p", lambda qp: {"preset": "medium", "x265-params": X265.format(qp=qp)}),
    ("av1", {}, "libsvtav1", "obu", "libdav1d", "yuv420p", lambda qp: {"qp": str(qp), "preset": "6", "svtav1-params": "avif=1:lp=1"}),
]


def psnr(a, b) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def codec(name, options):
    cls = registry.get("codec", name)
    return cls(cls.Options(**options))


def independent(rgb, qp, encoder, fmt, decoder, pix_fmt, options):
    """Written from the specifications, not from mpq's code: T.871's full-range BT.601
    equations, 4:2:0 as 2×2 means and a [1, 3, 3, 1] / 4 interpolation filter, the raw
    elementary stream written to a file by FFmpeg's muxer and decoded from that file."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    ycc = [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b]
    if pix_fmt == "yuv420p":
        ycc[1:] = [(c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) / 4 for c in ycc[1:]]
    y, cb, cr = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in ycc)
    h, w = y.shape
    frame = av.VideoFrame(w, h, pix_fmt)
    for plane, values in zip(frame.planes, (y, cb, cr)):
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        rows[: values.shape[0], : values.shape[1]] = values
    frame.pts = 0
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.options = options(qp)
        stream.codec_context.color_range, stream.codec_context.colorspace = 2, 5
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data), format=fmt) as inp:
        inp.streams.video[0].codec_context.thread_count = 1
        (out_frame,) = list(inp.decode(video=0))
        assert out_frame.format.name.replace("yuvj", "yuv") == pix_fmt and inp.streams.video[0].codec_context.name == decoder
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width].astype(np.float64) for p in out_frame.planes]

    def up(c):  # zero-stuffed, then [1, 3, 3, 1] / 4 along each axis, the edges repeated
        for axis in (0, 1):
            c = np.moveaxis(c, axis, 0)
            padded = np.concatenate([c[:1], c, c[-1:]])
            stuffed = np.zeros((2 * len(padded), *c.shape[1:]))
            stuffed[::2] = padded
            c = np.moveaxis(sum(k * stuffed[i : i + 2 * len(c)] for i, k in zip(range(4), (1, 3, 3, 1))) / 4, 0, axis)
        return c

    y, cb, cr = planes if pix_fmt == "yuv444p" else [planes[0], up(planes[1]), up(planes[2])]
    rgb_out = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1)
    return len(data), np.clip(np.rint(rgb_out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name,options,encoder,fmt,decoder,pix_fmt,encoder_options", CASES, ids=["hevc-444", "hevc-420", "av1"])
def test_bits_and_psnr_equal_an_independent_encode(name, options, encoder, fmt, decoder, pix_fmt, encoder_options):
    img = photo(64, 96)
    coded = codec(name, options).roundtrip(media.Image(img), 30)
    nbytes, pixels = independent(img, 30, encoder, fmt, decoder, pix_fmt, encoder_options)
    assert coded.bits == 8 * nbytes
    assert np.array_equal(coded.decoded.pixels, pixels) and psnr(img, coded.decoded.pixels) == psnr(img, pixels)
    assert 25 < psnr(img, pixels) < 50


@pytest.mark.parametrize("name,options", [("hevc", {}), ("hevc", {"chroma": "420"}), ("av1", {})], ids=["hevc-444", "hevc-420", "av1"])
@pytest.mark.parametrize("size", [(1, 1), (15, 17), (16, 16), (33, 47), (3, 200)])
def test_odd_and_tiny_images_are_padded_and_cropped_back(name, options, size):
    c = codec(name, options)
    h, w = size
    img = photo(h, w)
    coded = c.roundtrip(media.Image(img), 30)
    assert coded.decoded.pixels.shape == img.shape
    # Independently: padded by hand to what the encoder takes, coded, cropped.
    ph, pw = max(h, c.min_side), max(w, c.min_side)
    if c.chroma() == "420":
        ph, pw = ph + ph % 2, pw + pw % 2
    padded = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    whole = c.roundtrip(media.Image(padded), 30)
    assert coded.bits == whole.bits and np.array_equal(coded.decoded.pixels, whole.decoded.pixels[:h, :w])
    assert psnr(img, coded.decoded.pixels) > 20  # lossy, not garbage


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hevc", "av1"])
def test_a_large_odd_image(name):
    img = np.tile(photo(301, 257), (7, 9, 1))  # 2107 × 2313
    coded = codec(name, {}).roundtrip(media.Image(img), 35)
    assert coded.decoded.pixels.shape == img.shape and psnr(img, coded.decoded.pixels) > 25
    assert coded.bits < 8 * img.size / 10


@pytest.mark.parametrize("name,options", [("hevc", {}), ("hevc", {"chroma": "420"}), ("av1", {})], ids=["hevc-444", "hevc-420", "av1"])
def test_a_harsher_qp_gives_fewer_bits_and_lower_psnr(name, options):
    from skimage import data

    img = data.astronaut()[128:384, 128:384]
    c = codec(name, options)
    runs = [c.roundtrip(media.Image(img), qp) for qp in c.default_settings]
    bits = [r.bits for r in runs]
    quality = [psnr(img, r.decoded.pixels) for r in runs]
    assert bits == sorted(bits, reverse=True) and len(set(bits)) == len(bits)
    assert quality == sorted(quality, reverse=True) and len(set(quality)) == len(quality)
    bpp = [b / img.shape[0] / img.shape[1] for b in bits]
    assert bpp[0] > 1 and bpp[-1] < 0.2  # the default sweep spans the useful range on a photo


def test_a_picture_beyond_the_encoders_limits_is_refused_in_one_line():
    wide = media.Image(np.zeros((4, 17000, 3), np.uint8))  # wider than either encoder takes
    for name in ("hevc", "av1"):
        with pytest.raises(ValueError, match=r"refused to code a 17000×\d+ picture \(.+\)$"):
            codec(name, {}).roundtrip(wide, 30)


def test_settings_and_options_out_of_range_are_refused():
    for name, bad in (("hevc", 52), ("hevc", 30.5), ("av1", 0), ("av1", 64)):
        with pytest.raises(ValueError, match="QP must be an integer"):
            codec(name, {}).check_setting(bad)
    with pytest.raises(ValueError, match="chroma"):
        codec("hevc", {"chroma": "422"})
    assert "4:2:0" in codec("hevc", {"chroma": "420"}).version() and "4:4:4" in codec("hevc", {}).version()


def test_payload_is_the_coded_picture():
    from mpq.codecs.containers import av1_payload, hevc_payload

    img = photo(64, 96)
    # HEVC: VPS, SPS, PPS, then the IDR slice, the last NAL unit (type 19 or 20): the payload is it alone.
    coded = codec("hevc", {}).roundtrip(media.Image(img), 30)
    data = _stream("libx265", "yuv444p", CASES[0][6](30), img)
    last = data.rfind(b"\x00\x00\x01") + 3
    assert 8 * len(data) == coded.bits and (data[last] >> 1) & 0x3F in (19, 20)
    assert hevc_payload(data) == len(data) - last and coded.extra["payload_bits"] == 8 * (len(data) - last)
    # AV1: temporal delimiter (2 bytes), sequence header OBU (header, one-byte size), then the frame OBU.
    coded = codec("av1", {}).roundtrip(media.Image(img), 30)
    data = _stream("libsvtav1", "yuv420p", CASES[2][6](30), img)
    assert 8 * len(data) == coded.bits and data[:2] == b"\x12\x00" and data[2] >> 3 == 1 and data[3] < 128
    assert (data[4 + data[3]] >> 3) & 0xF == 6  # OBU_FRAME
    assert av1_payload(data) == len(data) - 4 - data[3] and coded.extra["payload_bits"] == 8 * av1_payload(data)


def _stream(encoder, pix_fmt, options, rgb) -> bytes:
    """The encoder's packets for this image, the codec's own way of converting colour."""
    from mpq.codecs.intra import to_ycbcr

    planes = to_ycbcr(rgb, pix_fmt == "yuv420p")
    h, w = planes[0].shape
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, pix_fmt, Fraction(1, 25)
    enc.color_range, enc.colorspace = 2, 5
    enc.options = options
    frame = av.VideoFrame(w, h, pix_fmt)
    for plane, values in zip(frame.planes, planes):
        np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: values.shape[0], : values.shape[1]] = values
    frame.pts = 0
    return b"".join(bytes(p) for p in [*enc.encode(frame), *enc.encode(None)])


@pytest.mark.parametrize("name", ["hevc", "av1"])
def test_a_target_bpp_finds_the_lowest_qp_that_fits(name):
    from mpq.targets import knob, search

    img = media.Image(photo(64, 96, seed=1))
    c = codec(name, {})

    def bpp(coded):
        return coded.bits / (64 * 96)

    qp, coded, rate = search(lambda q: c.roundtrip(img, q), bpp, knob(type(c)), 0.8, name)
    assert rate == bpp(c.roundtrip(img, qp)) <= 0.8 < bpp(c.roundtrip(img, qp - 1))  # one QP finer does not fit


def test_payload_parsers_on_hand_built_streams():
    from mpq.codecs.containers import av1_payload, hevc_payload

    def nal(kind, body):  # two-byte NAL header: type in bits 1-6 of the first byte
        return bytes([kind << 1, 1]) + body

    vps, sei, slice1, slice2 = nal(32, b"\x0c\x01"), nal(39, b"\x05\x80"), nal(1, b"\xaf\x00\x00\x03\x01\x80"), nal(19, b"\x12\x34\x80")
    stream = b"\x00\x00\x00\x01" + vps + b"\x00\x00\x01" + sei + b"\x00\x00\x00\x01" + slice1 + b"\x00\x00\x01" + slice2
    assert hevc_payload(stream) == len(slice1) + len(slice2)  # the 4-byte start codes' zero byte is no part of a NAL

    def obu(kind, body, extension=False, sized=True):
        header = bytes([kind << 3 | extension << 2 | sized << 1]) + (b"\x00" if extension else b"")
        size = b"" if not sized else bytes([len(body)]) if len(body) < 128 else bytes([len(body) & 0x7F | 0x80, len(body) >> 7])
        return header + size + body

    frame_header, tiles, last = obu(3, b"\x10" * 5), obu(4, b"\x20" * 300, extension=True), obu(6, b"\x30" * 7, sized=False)
    stream = obu(2, b"") + obu(1, b"\x00" * 11) + frame_header + obu(15, b"\x00" * 4) + tiles + last
    assert len(tiles) == 2 + 2 + 300  # header, extension byte, a two-byte leb128 size
    assert av1_payload(stream) == len(frame_header) + len(tiles) + len(last)
