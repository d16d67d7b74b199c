"""Codecs: one module per family (Pillow, PyAV video intra and speech, CompressAI, HiFiC, neural audio), each a registered ``Codec``."""
