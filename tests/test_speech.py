"""AMR-NB and G.722: bits and samples against an independent encode, alignment and length at
any rate and channel count, the rate of each mode, the direction of the setting."""

import io
import math

import av
import numpy as np
import pytest
from test_audio import lag, tone

from mpq import registry
from mpq.media import audio_from_array, resample

AMR_FRAME_BYTES = dict(zip([4.75, 5.15, 5.9, 6.7, 7.4, 7.95, 10.2, 12.2], [13, 14, 16, 18, 20, 21, 27, 32]))  # RFC 4867 storage format


def psnr(a, b) -> float:
    return 10 * math.log10(1 / np.mean((a.astype(np.float64) - b) ** 2))


def independent(x, rate, encoder, fmt, kbps, decoder_options=None):
    """From the codecs' own terms, not mpq's code: int16 samples in frames of the encoder's
    size, muxed to a file by FFmpeg's raw muxer, demuxed and decoded again; the codec's delay
    found by cross-correlation. Returns the file and the decoded float samples."""
    pcm = np.clip(np.rint(x[:, 0] * 32768), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=rate, layout="mono", format="s16")
        stream.bit_rate = int(kbps * 1000)
        ctx = stream.codec_context
        ctx.open()
        for start in range(0, len(pcm), ctx.frame_size):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + ctx.frame_size], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data), format=fmt) as inp:
        stream = inp.streams.audio[0]
        dec = av.CodecContext.create(encoder, "r")  # the same library decodes
        dec.sample_rate, dec.layout = rate, "mono"
        dec.options = decoder_options or {}
        frames = [f.to_ndarray() for p in inp.demux(stream) for f in dec.decode(p)]  # demux ends with the flushing packet
    y = (np.concatenate(frames, axis=1).T / 32768).astype(np.float32)
    y = y[lag(x, y[: len(x)]) :]
    return data, np.pad(y, ((0, max(0, len(x) - len(y))), (0, 0)))[: len(x)]


@pytest.mark.parametrize("mode", [4.75, 7.95, 12.2])
def test_amr_nb_bits_and_samples_equal_an_independent_encode(mode):
    x = tone(1.0, 8000)
    coded = registry.get("codec", "amr_nb")().roundtrip(audio_from_array(x, 8000), mode)
    data, y = independent(x, 8000, "libopencore_amrnb", "amr", mode)
    assert data[:6] == b"#!AMR\n" and coded.bits == 8 * (len(data) - 6)  # the file: a 6-byte magic, then the packets
    assert (len(data) - 6) % AMR_FRAME_BYTES[mode] == 0 and data[6] >> 3 & 0xF == list(AMR_FRAME_BYTES).index(mode)  # the ToC names the mode
    assert np.array_equal(coded.decoded.samples, y) and psnr(x, coded.decoded.samples) == psnr(x, y)


@pytest.mark.parametrize("kbps", [48, 56, 64])
def test_g722_bits_and_samples_equal_an_independent_encode(kbps):
    x = tone(1.0, 16000)
    coded = registry.get("codec", "g722")().roundtrip(audio_from_array(x, 16000), kbps)
    data, y = independent(x, 16000, "g722", "g722", 64, {"bits_per_codeword": str(kbps // 8)})
    assert coded.bits == len(data) * kbps // 8  # one codeword a byte, of which the decoder reads 8, 7 or 6 bits
    assert np.array_equal(coded.decoded.samples, y) and psnr(x, coded.decoded.samples) == psnr(x, y)


@pytest.mark.parametrize("name,setting", [("amr_nb", 12.2), ("g722", 64)])
@pytest.mark.parametrize("rate,channels", [(8000, 1), (16000, 1), (44100, 2), (22050, 1)])
def test_aligned_as_long_as_the_input_at_its_rate_and_channels(name, setting, rate, channels):
    codec = registry.get("codec", name)()
    a = audio_from_array(tone(1.5, rate, channels), rate)
    y = codec.roundtrip(a, setting).decoded
    assert y.samples.shape == a.samples.shape and y.sample_rate == rate and y.samples.dtype == np.float32
    assert abs(lag(a.samples, y.samples)) <= math.ceil(rate / codec.rate) - 1  # within one sample at the codec's rate
    if channels == 2:  # coded mono: the same decoded signal in each channel
        assert np.array_equal(y.samples[:, 0], y.samples[:, 1])
    mono = a.samples.mean(axis=1, keepdims=True)
    snr = 10 * math.log10(np.sum(mono**2) / np.sum((mono - y.samples[:, :1]) ** 2))
    assert snr > 8


def test_amr_nb_modes_are_their_frame_sizes_and_the_note_says_when_off():
    codec = registry.get("codec", "amr_nb")()
    a = audio_from_array(tone(3.0, 8000), 8000)
    for mode, size in AMR_FRAME_BYTES.items():
        coded = codec.roundtrip(a, mode)
        frames, rest = divmod(coded.bits // 8, size)
        assert rest == 0 and 150 <= frames <= 152  # 3 s of 20-ms frames, and the encoder's delay flushed
        effective = coded.bits / a.duration / 1000
        assert (coded.extra["rate_note"] is None) == (abs(effective - mode) <= 0.1 * mode)
        assert coded.extra["requested_kbps"] == mode and coded.extra["codec_sample_rate"] == 8000
    assert "table-of-contents byte" in codec.roundtrip(a, 4.75).extra["rate_note"]  # 13 bytes / 20 ms: 5.2 kbps and more
    assert codec.roundtrip(a, 12.2).extra["rate_note"] is None


def test_a_harsher_mode_gives_fewer_bits_and_lower_psnr():
    from mpq.sources.audio_samples import espeak

    speech = espeak("The birch canoe slid on the smooth planks.", "en-us")
    a = audio_from_array(resample(speech.samples, speech.sample_rate, 16000), 16000)
    # AMR-NB's decoder post-filters what its analysis-by-synthesis coded: the waveform's PSNR
    # orders its lowest and highest modes, not every neighbouring pair.
    for name, modes in (("amr_nb", [4.75, 12.2]), ("g722", [48, 56, 64])):
        codec = registry.get("codec", name)()
        runs = [codec.roundtrip(a, m) for m in modes]
        bits = [r.bits for r in runs]
        quality = [psnr(a.samples, r.decoded.samples) for r in runs]
        assert bits == sorted(bits) and len(set(bits)) == len(bits), name
        assert quality == sorted(quality) and len(set(quality)) == len(quality), name


def test_settings_outside_the_modes_are_refused():
    for name, bad in (("amr_nb", 12), ("amr_nb", True), ("g722", 32), ("g722", 63.9)):
        with pytest.raises(ValueError, match="must be one of its modes"):
            registry.get("codec", name)().check_setting(bad)
    registry.get("codec", "g722")().check_setting(56.0)
