"""Quality metrics: one module per family (fidelity, LPIPS, DISTS, SSIMULACRA 2, audio, speech), each a registered ``Metric``."""
