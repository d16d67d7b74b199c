"""Audio: media conversions, codecs (alignment, real bits), metrics against their reference
code, Whisper and Demucs tasks, and bad input through the engine."""

import io
import math

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from mpq import registry
from mpq.media import MediaError, audio_from_array, audio_from_bytes


def tone(seconds=1.0, rate=44100, channels=1, seed=0) -> np.ndarray:
    """A chirp with a little noise: (n, channels) float32, compressible like music."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (220 + 600 * t) * t) + 0.01 * rng.normal(size=t.size)
    return np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


def wav_bytes(x, rate, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def lag(reference: np.ndarray, test: np.ndarray, max_lag=2000) -> int:
    """Delay of test against reference (samples), by cross-correlation."""
    r, t = reference[:, 0], test[:, 0]
    c = [np.dot(r[: len(r) - k], t[k:]) for k in range(max_lag)] + [np.dot(r[k:], t[: len(t) - k]) for k in range(1, max_lag)]
    k = int(np.argmax(c))
    return k if k < max_lag else -(k - max_lag + 1)


# --- media ---------------------------------------------------------------------------


def test_int16_wav_scaled_to_float_and_odd_inputs_converted_or_refused():
    x = (tone(0.1) * 32767).astype(np.int16)
    a = audio_from_bytes(wav_bytes(x, 11025))
    assert a.sample_rate == 11025 and a.samples.dtype == np.float32
    assert np.allclose(a.samples[:, 0], x[:, 0] / 32768, atol=1e-6) and a.conversion is None
    loud = audio_from_array(np.array([[0.5], [1.5], [-2.0]] * 200, np.float32), 8000)
    assert "clipped 400 sample(s)" in loud.conversion and loud.samples.max() == 1.0
    surround = audio_from_array(np.ones((800, 6), np.float32) * 0.1, 8000)
    assert surround.channels == 1 and "6 channels → mono" in surround.conversion
    for bad, message in [
        (np.zeros((0, 1)), "empty audio"),
        (np.zeros((10, 1)), "too short"),
        (np.array([[0.1], [np.nan]] * 400), "NaN"),
    ]:
        with pytest.raises(MediaError, match=message):
            audio_from_array(bad, 8000)
    with pytest.raises(MediaError, match="sample rate"):
        audio_from_array(np.zeros((800, 1)), 500)
    with pytest.raises(MediaError, match="not a readable audio file"):
        audio_from_bytes(b"RIFF\x00\x00 not a wav at all")


# --- classical codecs ----------------------------------------------------------------


@pytest.mark.parametrize("name,kbps,rate,channels", [
    ("mp3", 128, 44100, 2), ("opus", 64, 44100, 1), ("aac", 96, 48000, 2), ("mp3", 64, 22050, 1), ("opus", 96, 37800, 2),
])
def test_pyav_codecs_are_aligned_as_long_as_the_input_and_count_their_bits(name, kbps, rate, channels):
    a = audio_from_array(tone(1.5, rate, channels), rate)
    coded = registry.get("codec", name)().roundtrip(a, kbps)
    y = coded.decoded
    assert y.samples.shape == a.samples.shape and y.sample_rate == rate
    assert lag(a.samples, y.samples) == 0  # encoder delay and padding removed
    snr = 10 * math.log10(np.sum(a.samples**2) / np.sum((a.samples - y.samples) ** 2))
    assert snr > 10
    effective = coded.bits / a.duration / 1000
    assert effective < 1.15 * kbps and (name == "opus" or effective > 0.85 * kbps)  # Opus is VBR: simple signals take less
    assert (coded.extra["rate_note"] is None) == (abs(effective - kbps) <= 0.1 * kbps)


def test_mp3_below_lames_floor_is_reported_not_hidden():
    a = audio_from_array(tone(1.0, 48000), 48000)
    coded = registry.get("codec", "mp3")().roundtrip(a, 8)
    assert coded.bits / a.duration / 1000 > 30  # LAME gives 32 kbps at 48 kHz whatever is asked
    assert "requested 8 kbps" in coded.extra["rate_note"] and "32 kbps" in coded.extra["rate_note"]
    low = audio_from_array(tone(1.0, 16000), 16000)
    assert registry.get("codec", "mp3")().roundtrip(low, 8).extra["rate_note"] is None


# --- neural codecs -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,model,kbps,channels", [
    ("encodec_24khz", "builtin:tiny-encodec-24khz", 6, 1),
    ("encodec_48khz", "builtin:tiny-encodec-48khz", 6, 2),
    ("dac", "builtin:tiny-dac-44khz", 3.45, 1),
])
def test_neural_codecs_decode_from_their_bytes_exactly_as_the_model_does(name, model, kbps, channels):
    import torch

    from mpq.codecs.neural_audio import load_codec_model
    from mpq.media import resample

    cls = registry.get("codec", name)
    codec = cls(cls.Options(model=model))
    rate = 44100 if name.startswith("dac") else 24000 if "24" in name else 48000
    a = audio_from_array(tone(1.3, rate, channels), rate)
    coded = codec.roundtrip(a, kbps)
    assert coded.decoded.samples.shape == a.samples.shape
    net = load_codec_model(name.split("_")[0], model)
    x = torch.from_numpy(np.ascontiguousarray(a.samples.T))[None]
    with torch.inference_mode():  # independently: the transformers model called directly
        if name.startswith("encodec"):
            enc = net.encode(x, bandwidth=float(kbps))
            want = net.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length).audio_values
            frames = enc.audio_codes.shape[-1] * enc.audio_codes.shape[0] - enc.last_frame_pad_length
            n_q = enc.audio_codes.shape[2]
            scale_bytes = 4 * enc.audio_codes.shape[0] if net.config.normalize else 0
        else:
            n_q = round(kbps / (44100 / 512 * 10 / 1000))
            pad = (-x.shape[-1]) % 512
            codes = net.encode(torch.nn.functional.pad(x, (0, pad)), n_quantizers=n_q).audio_codes[:, :n_q]
            want = net.decode(audio_codes=codes).audio_values[:, None]
            frames, scale_bytes = codes.shape[-1], 0
    want = want[0].numpy().T[: a.num_samples]
    assert np.allclose(coded.decoded.samples, np.clip(resample(want, rate, rate), -1, 1), atol=1e-5)
    assert coded.extra["bits_codebook"] == n_q * frames * 10
    assert coded.bits == 8 * (math.ceil(n_q * frames * 10 / 8) if scale_bytes == 0 else coded.bits // 8)
    assert coded.bits >= coded.extra["bits_codebook"] + 8 * scale_bytes


def test_bit_packing_round_trips():
    from mpq.codecs.neural_audio import pack_codes, unpack_codes

    codes = np.random.default_rng(0).integers(0, 1024, size=(3, 7))
    data = pack_codes(codes, 10)
    assert len(data) == math.ceil(21 * 10 / 8)
    assert np.array_equal(unpack_codes(data, 21, 10).reshape(3, 7), codes)


# --- metrics -------------------------------------------------------------------------


def test_audio_psnr_hand_worked():
    ref = audio_from_array(np.zeros((100, 2), np.float32), 8000)
    test = audio_from_array(np.zeros((100, 2), np.float32), 8000)
    test.samples[0, 0] = 0.1  # MSE = 0.01 / 200
    got = registry.get("metric", "audio_psnr")().compute([ref, ref], [test, ref])
    assert got[0]["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 / 200)))
    assert got[1]["psnr"] == math.inf


@pytest.mark.slow
def test_cdpam_equals_the_cdpam_package_on_the_same_input(monkeypatch):
    import cdpam
    import torch

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # lets cdpam's own constructor load its file
    reference = cdpam.CDPAM(dev="cpu")
    x = tone(0.25, 22050)
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 0.02, x.shape), -1, 1).astype(np.float32)
    got = registry.get("metric", "cdpam")().compute(
        [audio_from_array(x, 22050), audio_from_array(x, 22050)], [audio_from_array(noisy, 22050), audio_from_array(x, 22050)]
    )
    # cdpam.load_audio's scaling (× 32768, rounded), then cdpam.CDPAM.forward
    as_cdpam = lambda s: np.round(s[:, 0].astype(np.float64) * 32768).astype(np.float32)[None]  # noqa: E731
    with torch.no_grad():
        want = float(reference.forward(as_cdpam(x), as_cdpam(noisy)))
    assert want > 0.001
    assert got[0]["cdpam"] == pytest.approx(want, rel=1e-4)
    assert got[0]["cdpam_db"] == pytest.approx(-10 * math.log10(want), rel=1e-4)
    assert got[1]["cdpam"] == 0.0 and got[1]["cdpam_db"] == math.inf


# --- tasks ---------------------------------------------------------------------------


def test_word_errors_and_wra_hand_worked():
    from mpq.tasks.asr import ASR, english_normalizer, word_errors

    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "a cat sat down") == (2, 3)  # 1 substitution + 1 insertion
    assert word_errors("", "noise") == (1, 0)
    assert word_errors("Hello, world!", "hello world") == (2, 2)  # raw text: case and punctuation count
    norm = english_normalizer()
    assert word_errors(norm("Hello, world!"), norm("hello world")) == (0, 2)
    rows = pl.DataFrame({"word_errors": [1, 3], "ref_words": [4, 6], "word_errors_norm": [0, 1], "ref_words_norm": [4, 6],
                         "agreement": [0.5, None]})
    assert ASR.aggregate(rows) == pytest.approx({"wra": 1 - 4 / 10, "wra_norm": 1 - 1 / 10, "agreement": 0.5})


def test_nonfinite_agreement_is_counted_not_averaged():
    """0.2.0's separation agreement was +inf for identical separations, and its mean let it in:
    every task's mean agreement, and the run's summary, average the finite ones and count the rest."""
    from mpq.means import summarize, task_aggregates

    agreement = [0.5, math.inf, float("nan"), None, 0.7]
    for name in ("asr", "separate", "classify", "segment"):
        rows = pl.DataFrame({"agreement": agreement}, schema={"agreement": pl.Float64})
        extra = {"asr": {"word_errors": [0] * 5, "ref_words": [1] * 5, "word_errors_norm": [0] * 5, "ref_words_norm": [1] * 5},
                 "classify": {"correct": [True] * 5}, "segment": {"intersection": [None] * 5},
                 "separate": {f"sdr_{s}": [1.0] * 5 for s in ("drums", "bass", "other", "vocals")}}[name]
        agg = registry.get("task", name).aggregate(rows.with_columns(pl.Series(k, v) for k, v in extra.items()))
        assert agg["agreement"] == pytest.approx(0.6) and agg["agreement_nonfinite"] == 2, (name, agg)
    clean = registry.get("task", "classify").aggregate(pl.DataFrame({"correct": [True, None], "agreement": [0.5, None]}))
    assert clean == {"accuracy": 1.0, "agreement": 0.5}  # nothing left out: no count
    df = pl.DataFrame({
        "dataset": "music", "task": "separate", "task_type": "separate", "codec": "opus", "setting": "12",
        "sample_id": [str(i) for i in range(5)], "error": pl.Series([None] * 5, dtype=pl.String), "agreement": agreement,
        **{f"sdr_{s}": [1.0] * 5 for s in ("drums", "bass", "other", "vocals")},
    })
    for table in (task_aggregates(df), summarize(df)):
        assert table["agreement"].to_list() == [pytest.approx(0.6)] and table["agreement_nonfinite"].to_list() == [2]


@pytest.mark.slow
def test_tiny_whisper_loads_through_from_pretrained_and_transcribes_any_rate():
    cls = registry.get("task", "asr")
    task = cls(cls.Options(model="builtin:tiny-whisper"))
    task.load()
    media = [audio_from_array(tone(0.5, 48000, 2), 48000), audio_from_array(tone(0.3, 11025), 11025)]
    out = task.predict(media, ["a reference sentence", "Two words."])
    assert [o["ref_words"] for o in out] == [3, 2] and all(isinstance(o["prediction"], str) for o in out)
    assert all(o["word_errors"] >= 0 and o["score"] <= 1 for o in out)
    assert task.pipeline_check
    # The transcripts are those of the feature extractor at its defaults (log-mel on the CPU) and generate.
    import torch

    from mpq.media import resample, with_channels

    waves = [resample(with_channels(a.samples, 1), a.sample_rate, 16000)[:, 0] for a in media]
    features = task.processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.inference_mode():
        ids = task.model.generate(features, language="en", task="transcribe")
    assert [o["prediction"] for o in out] == [t.strip() for t in task.processor.batch_decode(ids, skip_special_tokens=True)]


def harsh_speech():
    """harvard-02 as the speech source speaks it, under white noise at −5 dB SNR."""
    from mpq.media import Audio
    from mpq.sources.audio_samples import Speech, SpeechOptions

    clip = Speech(SpeechOptions(speech="espeak", count=2)).load("harvard-02").media
    x = clip.samples.astype(np.float64)
    noise = np.random.default_rng(0).normal(size=x.shape)
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) * 10 ** (5 / 10))
    return Audio(np.clip(x + noise, -1, 1).astype(np.float32), clip.sample_rate)


@pytest.mark.slow
def test_whisper_reads_a_harsh_clip_the_same_every_time():
    """faster-whisper's default temperature fallback (0, 0.2, ..., 1.0, sampled) read this clip
    "the leaves that are not glued back around.", a sampled decoding (measured; two sampled
    decodings at temperature 1.0 in one process read "lose a bit of a dark blue mask around."
    and "in the room."); mpq decodes at temperature 0 with no fallback: beam search,
    faster-whisper's own transcription at temperature=0.0, the same every time."""
    from mpq.media import resample, with_channels

    cls = registry.get("task", "asr")
    task = cls(cls.Options(model="builtin:whisper-tiny.en"))
    task.load()
    clip = harsh_speech()
    texts = [task.transcribe([clip])[0] for _ in range(3)]
    wave = resample(with_channels(clip.samples, 1), clip.sample_rate, 16000)[:, 0]
    segments, info = task.model.transcribe(wave, language="en", task="transcribe", temperature=0.0)
    assert texts == [" ".join(s.text.strip() for s in segments).strip()] * 3 and info.transcription_options.temperatures == [0.0]


@pytest.mark.slow
def test_whisper_through_transformers_samples_the_same_every_run_and_rows_record_the_temperature(tmp_path):
    """A tiny random Whisper (transformers) at temperature 1.0 samples its transcripts: seeded,
    two runs write the same ones; every row records the temperature in `task_options`."""
    import json

    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    def run(out, temperature):
        run_job(parse_job({
            "name": "asr", "datasets": [{"name": "speech", "source": {"speech": "espeak", "count": 1}}],
            "codecs": [{"name": "opus", "settings": [6]}],
            "tasks": [{"name": "asr", "model": "builtin:tiny-whisper", "temperature": temperature}],
        }), str(tmp_path / out), engine="serial", progress=False)
        return read_results(str(tmp_path / out)).sort("codec")

    first, second = run("a", 1.0), run("b", 1.0)
    assert first["prediction"].to_list() == second["prediction"].to_list() and first["error"].null_count() == 2
    assert [json.loads(o)["temperature"] for o in first["task_options"]] == [1.0, 1.0]
    coded = first.filter(pl.col("codec") == "opus")
    assert 0 <= coded["agreement"][0] <= 1 and "wer_vs_clean" in coded.columns
    assert json.loads(run("c", [0, 0.5])["task_options"][0])["temperature"] == [0, 0.5]  # the fallback runs too


def test_sdr_is_what_museval_bss_eval_v4_computes_without_its_distortion_filters():
    """``framewise_sdr`` against museval's ``bss_eval`` called directly (images version,
    time-invariant filters, 1 s windows: ``museval.evaluate``'s settings): the same SDR in every
    window, the same windows undefined (a source silent there), the tail shorter than a window
    dropped, a clip shorter than one window taken whole; a source silent throughout is refused
    as museval refuses it."""
    from mpq.tasks.separate import bss_eval_module, framewise_sdr

    bss = bss_eval_module()
    rng = np.random.default_rng(0)
    rate = 2000
    cases = []
    for sources, channels, n in [(2, 2, 3 * rate + 700), (3, 1, 2 * rate), (1, 2, rate // 2), (2, 1, 4 * rate + 1)]:
        ref = rng.normal(size=(sources, n, channels)).astype(np.float32)
        est = (0.8 * ref + rng.uniform(0.05, 1.0) * rng.normal(size=ref.shape)).astype(np.float32)
        cases.append((ref, est))
    ref, est = cases[0]
    ref[1, :rate] = 0  # silent reference: the first window undefined for every source
    est[0, 2 * rate : 3 * rate] = 0  # silent estimate: the third too
    ref, est = cases[3]
    est[1, rate : 2 * rate] = ref[1, rate : 2 * rate]  # exact in the second window
    for ref, est in cases:
        ours = framewise_sdr(ref, est, rate)
        theirs = bss.bss_eval(ref, est, window=rate, hop=rate, compute_permutation=False,
                              framewise_filters=False, bsseval_sources_version=False)[0]
        assert ours.shape == theirs.shape == (ref.shape[0], max(1, ref.shape[1] // rate))
        assert np.array_equal(np.isnan(ours), np.isnan(theirs))
        exact = np.isposinf(ours)  # an error of exactly 0; museval reports its projections' rounding there
        assert (theirs[exact] > 300).all()
        np.testing.assert_allclose(ours[~exact], theirs[~exact], rtol=0, atol=1e-9)
    assert np.isnan(framewise_sdr(*cases[0], rate)[:, [0, 2]]).all()
    assert np.isposinf(framewise_sdr(*cases[3], rate)).sum() == 1
    silent = cases[1][0].copy()
    silent[2] = 0
    with pytest.raises(ValueError, match="non-silent"):
        framewise_sdr(silent, cases[1][1], rate)


def test_sdr_follows_bss_eval_v4_and_aggregates_over_tracks():
    from mpq.tasks.separate import Separate, median_sdr

    rng = np.random.default_rng(0)
    rate = 8000
    ref = rng.normal(size=(2, 2 * rate, 2)).astype(np.float32)
    noise = 0.1 * rng.normal(size=ref.shape).astype(np.float32)
    ref[1, :rate] = 0  # a silent first second: undefined there, ignored by the median
    sdr = median_sdr(ref, ref + noise, rate)
    assert sdr[0] == pytest.approx(20, abs=0.5)  # white noise 20 dB down: SDR ≈ SNR
    assert sdr[1] == pytest.approx(20, abs=0.5)
    rows = pl.DataFrame({"sdr_drums": [1.0, 3.0, 8.0], "sdr_bass": [2.0, None, 4.0], "sdr_other": [0.0, 0.0, 3.0], "sdr_vocals": [5.0, 5.0, 5.0]})
    agg = Separate.aggregate(rows)
    assert agg["sdr_drums"] == 3.0 and agg["sdr_bass"] == 3.0
    assert agg["sdr_median"] == pytest.approx((3 + 3 + 0 + 5) / 4)
    assert agg["sdr_mean"] == pytest.approx((4 + 3 + 1 + 5) / 4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["builtin:tiny-hdemucs", "builtin:tiny-htdemucs"])
def test_tiny_demucs_loads_through_get_model_and_separates_to_the_stems_shape(model):
    from mpq.media import STEMS

    cls = registry.get("task", "separate")
    task = cls(cls.Options(model=model, shifts=0))
    task.load()
    # mono stems at 22.05 kHz: the estimates are mapped to the stems' rate and channels
    stems = {s: audio_from_array(tone(1.0, 22050, 1, seed=i), 22050) for i, s in enumerate(STEMS)}
    mix = audio_from_array(sum(s.samples for s in stems.values()), 22050)
    est = task.separate(mix)  # at the model's 44.1 kHz, stereo
    assert set(est) == set(STEMS) and all(e.shape == (44100, 2) for e in est.values())
    out = task.predict([mix], [stems])[0]
    assert all(out[f"sdr_{s}"] is not None for s in STEMS) and out["score"] is not None


# --- bad input through the engine ----------------------------------------------------


@pytest.mark.slow
def test_bad_audio_files_become_error_rows_and_good_ones_get_rates_and_metrics(tmp_path):
    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    root = tmp_path / "clips"
    root.mkdir()
    (root / "speech.wav").write_bytes(wav_bytes(tone(0.6, 48000), 48000))
    (root / "speech.txt").write_text("the birch canoe")
    (root / "odd_rate.wav").write_bytes(wav_bytes(tone(0.5, 11025, 2), 11025))
    (root / "silent.wav").write_bytes(wav_bytes(np.zeros((8000, 1)), 16000))
    (root / "loud.wav").write_bytes(wav_bytes(5 * tone(0.5, 16000), 16000, subtype="FLOAT"))
    (root / "nan.wav").write_bytes(wav_bytes(np.full((8000, 1), np.nan, np.float32), 16000, subtype="FLOAT"))
    (root / "empty.wav").write_bytes(wav_bytes(np.zeros((0, 1)), 16000))
    (root / "tiny.wav").write_bytes(wav_bytes(np.zeros((20, 1)), 16000))
    (root / "corrupt.mp3").write_bytes(b"ID3 this is not an mp3")
    job = parse_job({
        "name": "audio",
        "datasets": [{"name": "clips", "source": {"folder": str(root), "media": "audio", "labels": "text"}}],
        "codecs": [{"name": "mp3", "settings": [8]}, {"name": "opus", "settings": [12]}],
        "tasks": [{"name": "asr", "model": "builtin:tiny-whisper", "max_new_tokens": 4}],
        "metrics": ["audio_psnr"],
    })
    out = str(tmp_path / "out")
    run_job(job, out, engine="serial", progress=False)
    df = read_results(out)
    assert df.height == 8 * 3
    errors = dict(df.filter(pl.col("error").is_not_null()).select("sample_id", "error").unique().iter_rows())
    assert set(errors) == {"nan.wav", "empty.wav", "tiny.wav", "corrupt.mp3"}
    assert "NaN" in errors["nan.wav"] and "too short" in errors["tiny.wav"] and "empty" in errors["empty.wav"]
    for sample_id in ("nan.wav", "empty.wav", "tiny.wav", "corrupt.mp3"):
        assert str(errors[sample_id]).startswith("load: MediaError"), (sample_id, errors)
    ok = df.filter(pl.col("error").is_null() & (pl.col("codec") != "none"))
    assert ok.height == 4 * 2 and ok["psnr"].is_not_null().all()
    assert (ok["bps"] - ok["bits"] / (ok["num_samples"] * ok["channels"])).abs().max() < 1e-12
    assert (ok["kbps"] - ok["bits"] / ok["duration"] / 1000).abs().max() < 1e-12
    mp3 = ok.filter((pl.col("codec") == "mp3") & (pl.col("sample_id") == "speech.wav"))
    assert mp3["rate_note"][0] is not None and mp3["requested_kbps"][0] == 8
    assert df.filter(pl.col("sample_id") == "loud.wav")["conversion"][0].startswith("clipped")
    speech = df.filter((pl.col("sample_id") == "speech.wav") & (pl.col("codec") == "none"))
    assert speech["label"][0] == "the birch canoe" and speech["ref_words"][0] == 3
    assert set(df.filter(pl.col("sample_id") == "odd_rate.wav")["sample_rate"]) == {11025}


@pytest.mark.slow
def test_hf_audio_column_is_decoded_by_mpq_without_torchcodec(tmp_path):
    """A split laid out as the hub's Parquet files are (Audio feature: bytes + path)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = [wav_bytes(tone(0.5, 48000, seed=i), 48000) for i in range(2)]
    audio = pa.array([{"bytes": b, "path": f"clip{i}.mp3"} for i, b in enumerate(clips)],
                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    features = {"audio": {"_type": "Audio"}, "sentence": {"dtype": "string", "_type": "Value"}}
    table = pa.table({"audio": audio, "sentence": ["hello there", "general kenobi"]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}),
                   tmp_path / "validation.parquet")
    cls = registry.get("source", "hf")
    src = cls(cls.Options(hf=str(tmp_path), split="validation", audio="audio", label="sentence"))
    assert src.modality == "audio" and src.ids() == ["0", "1"]
    sample = src.load("1")
    assert sample.target == "general kenobi" and sample.media.sample_rate == 48000
    assert np.allclose(sample.media.samples, audio_from_bytes(clips[1]).samples)


def test_commonvoice_release_folder_in_tsv_order(tmp_path):
    (tmp_path / "clips").mkdir()
    rows = [("b.mp3", "Second clip, read first."), ("a.mp3", "Then this one.")]
    for name, _ in rows:
        (tmp_path / "clips" / name).write_bytes(wav_bytes(tone(0.3, 48000), 48000))  # libsndfile sniffs the content
    (tmp_path / "dev.tsv").write_text("client_id\tpath\tsentence\tup_votes\n" + "".join(f"x\t{p}\t{s}\t2\n" for p, s in rows))
    cls = registry.get("source", "commonvoice")
    src = cls(cls.Options(commonvoice=str(tmp_path)))
    assert src.ids() == ["b.mp3", "a.mp3"]
    sample = src.load("a.mp3")
    assert sample.target == "Then this one." and sample.media.sample_rate == 48000


@pytest.mark.slow
def test_offline_hub_codec_and_demucs_fail_before_work_naming_them(tmp_path):
    from mpq.components import AssetUnavailable
    from mpq.runner import run_job
    from mpq.spec import parse_job

    base = {"name": "x", "datasets": [{"name": "m", "source": {"music": "synthetic", "tracks": 1, "seconds": 1}}]}
    with pytest.raises(AssetUnavailable, match="facebook/encodec_48khz"):
        run_job(parse_job({**base, "codecs": [{"name": "encodec_48khz", "settings": [6]}]}), str(tmp_path / "a"), engine="serial", progress=False)
    with pytest.raises(AssetUnavailable, match="demucs htdemucs"):
        run_job(parse_job({**base, "tasks": [{"name": "separate"}]}), str(tmp_path / "b"), engine="serial", progress=False)


def test_bps_is_the_studys_bits_per_channel_sample():
    """The study's Table 4: EnCodec 6.06 kbps / (2 × 44100) = 0.0687; MP3 32 kbps → 0.3628."""
    from mpq.media import Audio

    audio_rate = Audio.rate

    stereo = Audio(np.zeros((44100 * 2, 2), np.float32), 44100)  # 2 s
    assert audio_rate(stereo, 2 * 32000)["bps"] == pytest.approx(0.3628, abs=1e-4)
    assert audio_rate(stereo, 2 * 6060)["bps"] == pytest.approx(0.0687, abs=1e-4)
    assert audio_rate(stereo, 2 * 32000)["kbps"] == pytest.approx(32)
    mono = Audio(np.zeros((44100, 1), np.float32), 44100)
    assert audio_rate(mono, 32000)["bps"] == pytest.approx(32000 / 44100)


def test_dac_settings_give_distinct_rates_on_stereo_or_are_refused(tmp_path):
    """Measured: tiny DAC on 44.1 kHz stereo gave 1.725, 1.725, 3.448, 6.896, 6.896 kbps for its
    five default settings: codebooks were rounded over both channels. A setting is per channel
    (the mono model codes each channel), so the sweep's settings stay distinct."""
    from mpq.runner import run_job
    from mpq.spec import parse_job

    cls = registry.get("codec", "dac")
    codec = cls(cls.Options(model="builtin:tiny-dac-44khz"))
    stereo = audio_from_array(tone(0.5, 44100, channels=2), 44100)
    coded = [codec.roundtrip(stereo, s) for s in cls.default_settings]
    kbps = [c.bits / stereo.duration / 1000 for c in coded]
    assert len({round(k, 3) for k in kbps}) == len(kbps) and kbps == sorted(kbps)
    per_channel = 44100 / 512 * 10 / 1000  # one codebook, one channel
    for setting, c in zip(cls.default_settings, coded):
        assert c.extra["bits_codebook"] == 2 * round(setting / per_channel) * math.ceil(stereo.num_samples / 512) * 10
        # The note compares the rate per channel coded with the setting: only rounding to whole codebooks is left.
        per = c.bits / 2 / stereo.duration / 1000
        assert (c.extra["rate_note"] is None) == (abs(per - setting) <= 0.1 * setting)
        assert c.extra["rate_note"] is None or "whole codebook" in c.extra["rate_note"]

    job = parse_job({
        "name": "dac", "datasets": [{"name": "m", "source": {"music": "synthetic", "tracks": 1, "seconds": 1}}],
        "codecs": [{"name": "dac", "model": "builtin:tiny-dac-44khz", "settings": [0.86, 1.0]}],
    })
    with pytest.raises(ValueError, match=r"0\.86 and 1 kbps both give 1 codebook"):
        run_job(job, str(tmp_path / "o"), engine="serial", progress=False)
