import math

import numpy as np
import pytest
from conftest import photo

from mpq import registry
from mpq.metrics.fidelity import psnr


def test_psnr_hand_worked():
    ref = np.zeros((2, 2, 3), np.uint8)
    test = ref.copy()
    test[0, 0, 0] = 10  # one error of 10 over 12 values: MSE = 100 / 12
    assert psnr(ref, test) == pytest.approx(10 * math.log10(255**2 / (100 / 12)))
    assert psnr(ref, ref) == math.inf


def test_psnr_metric_component_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = photo(seed=1), photo(seed=2)
    out = registry.get("metric", "psnr")().compute([a], [b])
    assert out[0]["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def test_lpips_matches_the_lpips_package_called_directly():
    import lpips
    import torch

    a, b, c, d = photo(64, 64, seed=1), photo(64, 64, seed=2), photo(48, 80, seed=3), photo(64, 64, seed=4)
    cls = registry.get("metric", "lpips")
    metric = cls(cls.Options(backbone="random"))
    # two sizes in one batch; reference a (its features computed once) against b, a and d
    got = metric.compute([a, c, a, a.copy()], [b, c, a, d])
    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    with torch.inference_mode():
        want = [net(lpips.im2tensor(a), lpips.im2tensor(x)).item() for x in (b, d)]  # lpips' own [-1, 1] scaling
    assert got[0]["lpips"] == pytest.approx(want[0], rel=1e-5)
    assert got[3]["lpips"] == pytest.approx(want[1], rel=1e-5) and want[0] != pytest.approx(want[1])
    assert got[1]["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert got[2]["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert metric.pipeline_check  # random backbone rows are marked
