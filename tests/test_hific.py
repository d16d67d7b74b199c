"""HiFiC: checkpoints in the port's format load through mpq's loader and code real bitstreams."""

import math

import numpy as np
import pytest
import torch
from helpers import photo

from mpq import registry
from mpq.media import Image

# What the port records in a checkpoint's "args" (a subset; the rest is training state).
PORT_ARGS = {
    "latent_channels": 220, "n_residual_blocks": 1, "use_channel_norm": True, "likelihood_type": "gaussian",
    "normalize_input_image": False, "sample_noise": False, "use_latent_mixture_model": False, "regime": "low",
}


def write_checkpoint(folder, name, **args):
    """A checkpoint as the port saves one: its model_state_dict (with discriminator entries
    the coder does not need), its args, optimizer state. Random weights, perturbed so no
    norm gain or bias sits at its initial value."""
    from mpq.codecs.hific_net import architecture, build_net

    torch.manual_seed(0)
    net = build_net(architecture({**PORT_ARGS, **args}))
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in net.state_dict().items()}
    state["Hyperprior.synthesis_std.conv3.bias"] += 3.0  # scales a trained model would predict (σ ≈ 1..5)
    state["Discriminator.conv1.weight"] = torch.zeros(4, 4)
    path = folder / name
    torch.save({"model_state_dict": state, "args": {**PORT_ARGS, **args}, "optimizers": {}}, path)
    return path, state


def information_bits(net, z_hat, y_hat, mu, sigma):
    """Information content in bits of the quantised hyper-latents under the factorized
    density and of the latents under N(mu, sigma): the port's own rate estimate, computed
    here without CompressAI's tables or coder."""
    c = z_hat.shape[1]
    v = z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1).double()
    density = net.Hyperprior.hyperlatent_likelihood
    p_z = torch.sigmoid(density.cdf_logits(v + 0.5)) - torch.sigmoid(density.cdf_logits(v - 0.5))
    upper = 0.5 * torch.erfc(-((y_hat - mu + 0.5) / sigma) / math.sqrt(2))
    lower = 0.5 * torch.erfc(-((y_hat - mu - 0.5) / sigma) / math.sqrt(2))
    return float(-torch.log2(p_z.clamp(min=1e-9)).sum() - torch.log2((upper - lower).clamp(min=1e-9)).sum())


@pytest.mark.slow
def test_hific_loads_a_port_checkpoint_and_codes_real_bitstreams(tmp_path):
    import torch.nn.functional as F

    from mpq.codecs.hific_net import SCALE_MIN, HiFiCNet

    path, state = write_checkpoint(tmp_path, "hific_low.pt")
    cls = registry.get("codec", "hific")
    codec = cls(cls.Options(checkpoints=str(tmp_path)))
    img = photo(70, 100)
    coded = codec.roundtrip(Image(img), "low")
    assert coded.decoded.pixels.shape == img.shape
    assert coded.extra["codec_variant"].startswith("HIFIC-low: hific_low.pt sha256:")
    assert "gaussian latents, C=220, 1 residual blocks, channel norm" in coded.extra["codec_variant"]

    # Independently: the checkpoint's weights loaded by hand, the port's quantisation
    # (ẑ = round(z), ŷ = round(y − μ) + μ) applied directly, no entropy coder involved.
    net = HiFiCNet(220, 1, True).eval()
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("Discriminator")})
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = net.Encoder(F.pad(x, (0, 12, 0, 10), mode="reflect"))  # 70×100 → 80×112
        y = F.pad(y, (0, 1, 0, 3), mode="reflect")  # 5×7 → 8×8
        z_hat = torch.round(net.Hyperprior.analysis_net(y))
        mu = net.Hyperprior.synthesis_mu(z_hat)
        sigma = net.Hyperprior.synthesis_std(z_hat).clamp(min=SCALE_MIN)
        y_hat = torch.round(y - mu) + mu
        want = net.Generator(y_hat)[0, :, :70, :100].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        info = information_bits(net, z_hat, y_hat, mu, sigma)
    assert np.abs(want.astype(int) - coded.decoded.pixels).max() <= 1  # float noise may flip a rounding
    # Two real entropy-coded bitstreams: close above their information content (quantised
    # tables and the coder's flush bytes cost a little).
    assert coded.bits % 8 == 0 and info < coded.bits < 1.05 * info + 128


@pytest.mark.slow
def test_hific_logistic_latents_code_losslessly():
    from mpq.codecs.hific_net import HiFiCCoder, LogisticConditional, architecture, build_net

    torch.manual_seed(1)
    arch = architecture({**PORT_ARGS, "likelihood_type": "logistic"})  # as HIFIC-med was trained
    coder = HiFiCCoder(build_net(arch).eval(), arch)
    assert isinstance(coder.conditional, LogisticConditional)
    x = torch.from_numpy(photo(66, 80, seed=3)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        strings, z_shape = coder.compress(x)
        y = coder.latents(x)
        z_hat = torch.round(coder.net.Hyperprior.analysis_net(y))
        mu = coder.net.Hyperprior.synthesis_mu(z_hat)
        assert torch.equal(coder.decode_latents(strings, z_shape), torch.round(y - mu) + mu)


def test_hific_refuses_bad_checkpoints_settings_and_tiny_images(tmp_path):
    from mpq.codecs.hific_net import architecture, load_net

    with pytest.raises(ValueError, match="mixture model"):
        architecture({"use_latent_mixture_model": True})
    with pytest.raises(ValueError, match="noise"):
        architecture({"sample_noise": True})
    torch.save({"model_state_dict": {"Encoder.conv_block1.1.weight": torch.zeros(1)}, "args": PORT_ARGS}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_net(tmp_path / "x.pt")
    torch.save({"weights": {}}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="not a HiFiC checkpoint"):
        load_net(tmp_path / "y.pt")
    cls = registry.get("codec", "hific")
    with pytest.raises(ValueError, match="low, med, high"):
        cls().check_setting("lo")
    with pytest.raises(FileNotFoundError, match="hific_hi.pt"):
        cls(cls.Options(checkpoints=str(tmp_path))).roundtrip(Image(photo(80, 80)), "high")

    from mpq.runner import run_job
    from mpq.spec import parse_job

    job = parse_job({
        "name": "h", "datasets": [{"name": "d", "source": {"samples": "skimage"}}],
        "codecs": [{"name": "hific", "settings": ["low"], "checkpoints": str(tmp_path / "none")}],
    })
    with pytest.raises(FileNotFoundError, match="hific_low.pt"):  # before any work is done
        run_job(job, str(tmp_path / "out"), engine="serial", progress=False)
    assert not (tmp_path / "out").exists()
