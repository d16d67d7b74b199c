"""The speech metrics against their reference packages called directly, on real speech
(espeak-ng's Harvard sentences) coded by real Opus and MP3, at 16 kHz mono and 48 kHz
stereo: the metric's stated rate and channel handling applied by hand here."""

import math

import numpy as np
import pytest
import soundfile as sf
import soxr

from mpq import registry
from mpq.media import Audio


@pytest.fixture(scope="module")
def pairs() -> list[tuple[Audio, Audio]]:
    """(reference, coded): 16 kHz mono through Opus 12 kbps, 48 kHz stereo (the second
    channel quieter and delayed, so that the mean of channels differs from either one)
    through MP3 32 kbps and Opus 16 kbps."""
    from mpq.sources.audio_samples import Speech, SpeechOptions

    mono16 = Speech(SpeechOptions(speech="espeak", count=1, sample_rate=16000)).load("harvard-01").media
    x = Speech(SpeechOptions(speech="espeak", count=2, sample_rate=48000)).load("harvard-02").media.samples[:, 0]
    stereo48 = Audio(np.stack([x, 0.5 * np.roll(x, 240)], axis=1), 48000)
    opus, mp3 = registry.get("codec", "opus")(), registry.get("codec", "mp3")()
    return [(mono16, opus.roundtrip(mono16, 12).decoded), (stereo48, mp3.roundtrip(stereo48, 32).decoded),
            (stereo48, opus.roundtrip(stereo48, 16).decoded)]


def mean_channels(a: Audio) -> np.ndarray:
    return a.samples.astype(np.float64).mean(axis=1)


def at_16k(a: Audio) -> np.ndarray:
    x = a.samples.mean(axis=1, keepdims=True)  # float32, as the metric averages
    return x[:, 0].astype(np.float64) if a.sample_rate == 16000 else soxr.resample(x, a.sample_rate, 16000, quality="HQ")[:, 0].astype(np.float64)


def compute(name, pairs):
    return registry.get("metric", name)().compute([r for r, _ in pairs], [t for _, t in pairs])


def test_pesq_matches_the_pesq_package_at_16k_wide_band(pairs):
    from pesq import pesq

    got = compute("pesq", pairs)
    want = [pesq(16000, at_16k(r), at_16k(t), "wb") for r, t in pairs]
    assert [g["pesq"] for g in got] == pytest.approx(want, abs=1e-5)
    assert all(1.5 < w < 4.5 for w in want) and len({round(w, 3) for w in want}) == 3
    assert got[1]["pesq_input"] == "wb, 16000 Hz (soxr HQ), mean of channels"


@pytest.mark.slow
def test_stoi_and_estoi_match_pystoi_at_the_signals_own_rate(pairs):
    from pystoi import stoi

    got = compute("stoi", pairs)
    for (r, t), g in zip(pairs, got):
        assert g["stoi"] == pytest.approx(stoi(mean_channels(r), mean_channels(t), r.sample_rate), abs=1e-5)
        assert g["estoi"] == pytest.approx(stoi(mean_channels(r), mean_channels(t), r.sample_rate, extended=True), abs=1e-5)
        assert 0.5 < g["estoi"] < g["stoi"] < 1
    assert got[1]["stoi_input"] == "48000 Hz → 10000 Hz (pystoi), mean of channels"


@pytest.mark.slow
def test_visqol_matches_visqol_python_reading_the_files_itself(pairs, tmp_path):
    """At 16 kHz the package reads the WAV files and mixes their channels itself; 48 kHz
    audio is resampled to 16 kHz first (ViSQOL's speech mode does not resample)."""
    from visqol import VisqolApi

    api = VisqolApi()
    api.create(mode="speech", use_lattice_model=True)
    stereo16 = [(Audio(soxr.resample(r.samples, 48000, 16000, quality="HQ"), 16000),
                 Audio(soxr.resample(t.samples, 48000, 16000, quality="HQ"), 16000)) for r, t in pairs[1:]]
    cases = [pairs[0], *stereo16]
    got = compute("visqol", cases)
    for i, ((r, t), g) in enumerate(zip(cases, got)):
        sf.write(tmp_path / f"{i}r.wav", r.samples, 16000, subtype="FLOAT")
        sf.write(tmp_path / f"{i}t.wav", t.samples, 16000, subtype="FLOAT")
        assert g["visqol"] == pytest.approx(api.measure(str(tmp_path / f"{i}r.wav"), str(tmp_path / f"{i}t.wav")).moslqo, abs=1e-5)
    assert all(2 < g["visqol"] < 4.5 for g in got)
    at48 = compute("visqol", pairs[1:])
    for (r, t), g in zip(pairs[1:], at48):
        assert g["visqol"] == pytest.approx(api.measure_from_arrays(at_16k(r), at_16k(t), 16000).moslqo, abs=1e-5)
    assert at48[0]["visqol_input"] == "speech, lattice, 16000 Hz (soxr HQ), mean of channels"


def test_si_sdr_hand_worked():
    from mpq.metrics.speech import si_sdr

    s = np.array([1.0, -1.0, 1.0, -1.0])
    est = np.array([2.0, -2.0, 2.0, 0.0])  # zero-mean: [1.5, -2.5, 1.5, -0.5]; α = 6 / 4 = 1.5
    # target 1.5·s, energy 9; noise [0, -1, 0, 1], energy 2
    assert si_sdr(s, est) == pytest.approx(10 * math.log10(9 / 2))
    assert si_sdr(s, 3 * est + 7) == pytest.approx(10 * math.log10(9 / 2))  # scale and offset invariant
    assert si_sdr(s, -0.5 * s) == math.inf
    assert si_sdr(s, np.array([1.0, 1.0, -1.0, -1.0])) == -math.inf  # orthogonal: nothing of the target
    assert si_sdr(np.zeros(4), est) is None and si_sdr(s, np.full(4, 0.3)) is None


def test_si_sdr_equals_its_closed_form_in_the_correlation(pairs):
    """SI-SDR = 10·log10(ρ² / (1 − ρ²)), ρ the correlation of the two signals: an independent
    formula, on the mean of channels at the reference's own rate."""
    got = compute("si_sdr", pairs)
    for (r, t), g in zip(pairs, got):
        rho = np.corrcoef(mean_channels(r), mean_channels(t))[0, 1]
        assert g["si_sdr"] == pytest.approx(10 * math.log10(rho**2 / (1 - rho**2)), abs=1e-5)
    assert got[2]["si_sdr_input"] == "48000 Hz, mean of channels"


SPEECH_METRICS = ["pesq", "stoi", "visqol", "si_sdr"]


@pytest.mark.slow
def test_bad_speech_gives_null_scores_not_errors(pairs):
    """A silent clip, a clip too short for PESQ (0.2 s: it raises on it), and a silent coded
    version of real speech: through the metric stage, each
    row gets its scores (null where undefined) and no error."""
    from mpq.engine.stages import Measure
    from mpq.job import resolve
    from mpq.spec import parse_job

    speech = pairs[0][0]
    silence = Audio(np.zeros((16000, 1), np.float32), 16000)
    short = Audio(speech.samples[4000:7200].copy(), 16000)
    muted = Audio(np.zeros_like(speech.samples), 16000)
    cases = {"silence": (silence, silence), "short": (short, short), "muted": (speech, muted)}
    job = resolve(parse_job({"name": "bad", "datasets": [{"name": "d", "source": {"speech": "espeak", "count": 1}}], "metrics": SPEECH_METRICS}))
    rows = [{"dataset": "d", "sample_id": k, "codec": "opus", "setting": 12, "error": None, "original": r, "decoded": t}
            for k, (r, t) in cases.items()]
    out = {r["sample_id"]: r for r in Measure(job, device="cpu")(rows)}
    assert [r["error"] for r in out.values()] == [None] * 3
    for column in ("pesq", "stoi", "estoi", "visqol", "si_sdr"):
        assert out["silence"][column] is None, column
    assert out["short"]["pesq"] is None and out["short"]["stoi"] is None and out["short"]["visqol"] is None  # too short for each
    assert out["short"]["si_sdr"] == math.inf  # defined on any length
    assert out["muted"]["pesq"] is None and out["muted"]["visqol"] is None and out["muted"]["si_sdr"] is None
    assert out["muted"]["stoi"] == 0.0  # nothing intelligible left: STOI's own answer
    assert all(out[k]["pesq_input"] for k in cases)


@pytest.mark.slow
def test_a_job_with_bad_clips_writes_null_scores_and_its_input_columns(pairs, tmp_path):
    """Serial engine end to end, real Opus: speech at 16 kHz, the same at 11.025 kHz stereo,
    a silent clip and a 0.2-s snippet. Every row is written without error; the undefined
    scores are null in Parquet; each row says how its metric ran."""
    import polars as pl

    from mpq.reading import read_results
    from mpq.runner import run_job
    from mpq.spec import parse_job

    speech = pairs[0][0].samples
    root = tmp_path / "clips"
    root.mkdir()
    sf.write(root / "speech.wav", speech, 16000, subtype="FLOAT")
    odd = soxr.resample(speech, 16000, 11025)
    sf.write(root / "odd.wav", np.hstack([odd, 0.5 * odd]), 11025, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros((16000, 1), np.float32), 16000)
    sf.write(root / "short.wav", speech[4000:7200], 16000, subtype="FLOAT")
    job = parse_job({"name": "speech", "datasets": [{"name": "clips", "source": {"folder": str(root), "media": "audio"}}],
                     "codecs": [{"name": "opus", "settings": [12]}], "metrics": SPEECH_METRICS})
    run_job(job, str(tmp_path / "out"), engine="serial", progress=False)
    rows = read_results(str(tmp_path / "out")).filter(pl.col("codec") == "opus")
    assert rows.height == 4 and rows["error"].is_null().all()
    by = {r["sample_id"]: r for r in rows.iter_rows(named=True)}
    for sample in ("speech.wav", "odd.wav"):
        assert all(by[sample][c] is not None and math.isfinite(by[sample][c]) for c in ("pesq", "stoi", "estoi", "visqol", "si_sdr"))
    assert by["odd.wav"]["stoi_input"] == "11025 Hz → 10000 Hz (pystoi), mean of channels"
    assert by["odd.wav"]["si_sdr_input"] == "11025 Hz, mean of channels"
    assert [by["silent.wav"][c] for c in ("pesq", "stoi", "estoi", "visqol", "si_sdr")] == [None] * 5
    assert by["short.wav"]["pesq"] is None and by["short.wav"]["visqol"] is None
    assert rows["pesq_input"].is_not_null().all() and rows["visqol_input"].is_not_null().all()


def test_estoi_is_the_same_whatever_numpy_global_random_state_and_leaves_it_alone(pairs):
    """pystoi's ESTOI adds noise of machine-epsilon size from numpy's global generator: the
    same clips must still give the same row in every run (and that generator's next draw
    must be what it would have been)."""
    one = [pairs[0]]
    values = []
    for seed in (1, 2):
        np.random.seed(seed)
        values.append(compute("stoi", one)[0]["estoi"])
        after = np.random.random()
        np.random.seed(seed)
        assert after == np.random.random()
    assert values[0] == values[1]
