"""The harmonization loss against independent re-derivations.

* NumPy (float64) for the value: the standardisation, the rescaling and the Gaussian pyramid written as
  separable matrices (the binomial filter, TensorFlow's "SAME" zero padding and the stride in one matrix per axis),
  not as a convolution;
* ``torch.func`` for the gradient: the saliency by ``func.grad`` with respect to the input, the loss by the same
  separable matrices, the parameter gradient by ``func.grad`` over it (second order);
* central finite differences of the value along a random direction of the parameters.

The authors' TensorFlow code is compared in ``test_harmonization_tf.py`` (opt-in).
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from sklearn_ais.alignment import harmonization_loss
from sklearn_ais.alignment._harmonization_loss import (
    clickme_blur,
    clickme_kernel,
    decay_parameters,
    gaussian_pyramid,
    standardize_cut,
)

BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _down_matrix(n):
    """(ceil(n/2), n) matrix of one pyramid step along an axis: TF 'SAME' pads (total 5 - 2 + n odd/even rule)."""
    out = (n + 1) // 2
    total = max((out - 1) * 2 + 5 - n, 0)
    before = total // 2
    D = np.zeros((out, n))
    for i in range(out):
        for t in range(5):
            src = 2 * i + t - before
            if 0 <= src < n:
                D[i, src] += BINOMIAL[t]
    return D


def _np_pyramid(m, levels):
    out = [m]
    for _ in range(levels - 1):
        x = out[-1]
        Dh, Dw = _down_matrix(x.shape[1]), _down_matrix(x.shape[2])
        out.append(np.einsum("ih,nhw,jw->nij", Dh, x, Dw))
    return out


def _np_zcut(m):
    mu = m.mean(axis=(1, 2), keepdims=True)
    sd = m.std(axis=(1, 2), keepdims=True)
    return np.maximum((m - mu) / (sd + 1e-5), 0.0)


def _np_map_term(sal, human, tokens, levels=5):
    s, h = _np_zcut(sal), _np_zcut(human)
    h = h / (h.max(axis=(1, 2), keepdims=True) + 1e-6) * (s.max(axis=(1, 2), keepdims=True) + 1e-6)
    ps, ph = _np_pyramid(s, levels), _np_pyramid(h, levels)
    return np.mean([np.mean((a - b) ** 2 * tokens[:, None, None]) for a, b in zip(ps, ph)])


def _np_cross_entropy(logits, y, eps=0.1):
    n, c = logits.shape
    target = np.full((n, c), eps / c)
    target[np.arange(n), y] += 1 - eps
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(target * logp).sum(axis=1).mean())


class Net(nn.Module):
    """Smooth (tanh), with a normalisation module, a parameter named like an embedding and a token."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 1, 1) * 0.1)
        self.fc = nn.Linear(5, n_classes)

    def forward(self, x):
        x = torch.tanh(self.norm(self.conv1(x)))
        x = torch.tanh(self.conv2(x) + self.pos_embed)
        return self.fc((x * x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    maps = torch.rand(4, 32, 32, dtype=torch.float64)
    tokens = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    return net, x, y, maps, tokens


DECAYED = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias")


def _func_loss(net, x, y, maps, tokens, map_weight=1.0, wd=1e-5, fixed_smax=None, params=None, gradient=True):
    """The loss, re-derived with torch.func and separable pyramid matrices (its value and parameter gradient).

    ``fixed_smax``: the saliency maxima of the rescaling, held at given values (the loss's gradient does not
    differentiate them, so a finite difference of the value must not move them either).
    """
    names = [n for n, _ in net.named_parameters()]
    Ds = {}

    def mats(n):
        if n not in Ds:
            Ds[n] = torch.from_numpy(_down_matrix(n))
        return Ds[n]

    def pyr(m):
        out = [m]
        for _ in range(4):
            a = out[-1]
            out.append(torch.einsum("ih,nhw,jw->nij", mats(a.shape[1]), a, mats(a.shape[2])))
        return out

    def zcut(m):
        mu = m.mean(dim=(1, 2), keepdim=True)
        sd = ((m - mu) ** 2).mean(dim=(1, 2), keepdim=True).sqrt()
        return torch.clamp((m - mu) / (sd + 1e-5), min=0)

    def loss(params):
        p = dict(zip(names, params))

        def true_logit(inp):
            return functional_call(net, p, (inp,)).gather(1, y[:, None]).sum()

        sal = grad(true_logit)(x).mean(dim=1)
        logits = functional_call(net, p, (x,))
        n, c = logits.shape
        target = torch.full((n, c), 0.1 / c, dtype=x.dtype)
        target[torch.arange(n), y] += 0.9
        ce = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        s, h = zcut(sal), zcut(maps)
        smax = s.detach().amax(dim=(1, 2), keepdim=True) if fixed_smax is None else fixed_smax
        h = h / (h.amax(dim=(1, 2), keepdim=True) + 1e-6) * (smax + 1e-6)
        term = torch.stack([((a - b) ** 2 * tokens[:, None, None]).mean() for a, b in zip(pyr(s), pyr(h))]).mean()
        decay = sum((p[k] ** 2).sum() for k in DECAYED) / 2
        return ce + map_weight * term + wd * decay

    if params is None:
        params = tuple(p.detach() for _, p in net.named_parameters())
    return loss(params), (grad(loss)(params) if gradient else None), names


def test_value_matches_numpy(problem):
    net, x, y, maps, tokens = problem
    loss, parts = harmonization_loss(net, x, y, maps, tokens, return_parts=True)
    sal = parts["saliency"].numpy()
    # The saliency itself: a central difference of the true-class logit along a random input direction.
    v = torch.randn_like(x)
    with torch.no_grad():
        fd = (net(x + 1e-5 * v) - net(x - 1e-5 * v)).gather(1, y[:, None]).squeeze(1) / 2e-5
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr).gather(1, y[:, None]).sum(), xr)
    grad_dot_v = (g * v).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(fd.numpy(), grad_dot_v.numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sal, g.mean(dim=1).numpy(), rtol=0, atol=1e-12)
    ce = _np_cross_entropy(parts["logits"].numpy(), y.numpy())
    term = _np_map_term(sal, maps.numpy(), tokens.numpy())
    decay = sum(float((p.detach() ** 2).sum()) for n, p in net.named_parameters() if n in DECAYED) / 2
    expected = ce + term + 1e-5 * decay
    assert parts["map_term"] > 1e-3  # the map term is not negligible in this comparison
    assert abs(float(loss.detach()) - expected) <= 1e-5 * max(1.0, abs(expected))
    np.testing.assert_allclose([parts["cross_entropy"], parts["map_term"]], [ce, term], rtol=1e-10)


def test_parameter_gradient_matches_torch_func(problem):
    net, x, y, maps, tokens = problem
    net.zero_grad()
    loss = harmonization_loss(net, x, y, maps, tokens)
    loss.backward()
    ref_value, ref_grads, names = _func_loss(net, x, y, maps, tokens)
    assert abs(float(loss.detach()) - float(ref_value)) < 1e-10
    params = dict(net.named_parameters())
    worst = 0.0
    for name, g_ref in zip(names, ref_grads):
        g = params[name].grad
        scale = max(1.0, float(g_ref.abs().max()))
        worst = max(worst, float((g - g_ref).abs().max()) / scale)
    assert worst < 1e-5, worst
    # The map term contributes to the gradient (second order): without it the gradient differs.
    _, plain, _ = _func_loss(net, x, y, maps, tokens, map_weight=0.0)
    assert max(float((a - b).abs().max()) for a, b in zip(plain, ref_grads)) > 1e-4


def test_parameter_gradient_matches_finite_differences(problem):
    net, x, y, maps, tokens = problem
    net.zero_grad()
    harmonization_loss(net, x, y, maps, tokens).backward()
    rng = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=rng, dtype=p.dtype) for n, p in net.named_parameters()}
    analytic = sum(float((p.grad * direction[n]).sum()) for n, p in net.named_parameters())
    h = 1e-7  # small: pixels crossing the ReLU of the standardisation make the value piecewise smooth
    smax = standardize_cut(harmonization_loss(net, x, y, maps, tokens, return_parts=True)[1]["saliency"])
    smax = smax.amax(dim=(1, 2), keepdim=True)

    def value(sign):
        moved = tuple(p.detach() + sign * h * direction[n] for n, p in net.named_parameters())
        return float(_func_loss(net, x, y, maps, tokens, fixed_smax=smax, params=moved, gradient=False)[0])

    numeric = (value(+1) - value(-1)) / (2 * h)
    assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(analytic)), (numeric, analytic)


@pytest.mark.parametrize("size", [(32, 32), (7, 9), (224, 17)])
def test_pyramid_matches_separable_matrices(size):
    rng = np.random.default_rng(0)
    m = rng.random((2, *size))
    ours = gaussian_pyramid(torch.from_numpy(m), 5)
    ref = _np_pyramid(m, 5)
    assert [tuple(a.shape) for a in ours] == [a.shape for a in ref]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-12)


def test_standardize_cut_uses_population_std():
    m = np.random.default_rng(1).normal(size=(3, 5, 6))
    np.testing.assert_allclose(standardize_cut(torch.from_numpy(m)).numpy(), _np_zcut(m), atol=1e-12)


def test_tokens_zero_removes_an_image_but_not_from_the_mean(problem):
    net, x, y, maps, _ = problem
    ones = torch.ones(4, dtype=torch.float64)
    _, all_parts = harmonization_loss(net, x, y, maps, ones, return_parts=True)
    _, first = harmonization_loss(net, x[:1], y[:1], maps[:1], ones[:1], return_parts=True)
    flagged = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    _, one_of_four = harmonization_loss(net, x, y, maps, flagged, return_parts=True)
    # GroupNorm is per image, so image 0's term is the same alone; the batch mean divides by 4.
    assert one_of_four["map_term"] == pytest.approx(first["map_term"] / 4, rel=1e-10)
    assert all_parts["map_term"] > one_of_four["map_term"]


def test_decay_parameters_skip_norms_embeddings_and_tokens():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn1 = nn.Module()
            self.bn1.weight = nn.Parameter(torch.ones(4))  # a custom module named like a BN
            self.batchnorm = nn.BatchNorm2d(4)
            self.ln = nn.LayerNorm(4)
            self.tok = nn.Embedding(5, 4)
            self.cls_token = nn.Parameter(torch.zeros(1, 4))
            self.class_token = nn.Parameter(torch.zeros(1, 4))
            self.head = nn.Linear(4, 2)
            self.frozen = nn.Linear(4, 2)
            self.frozen.requires_grad_(False)

    names = [n for n, _ in decay_parameters(M())]
    assert names == ["conv.weight", "conv.bias", "head.weight", "head.bias"]


def test_clickme_blur_matches_tensorflow_same_correlation():
    rng = np.random.default_rng(2)
    m = rng.random((1, 12, 13))
    k = clickme_kernel()
    # TF conv2d "SAME" with a 10x10 kernel: pad 4 before and 5 after, then cross-correlate.
    padded = np.pad(m[0], ((4, 5), (4, 5)))
    ref = np.array([[np.sum(padded[r:r + 10, c:c + 10] * k) for c in range(13)] for r in range(12)])
    np.testing.assert_allclose(clickme_blur(torch.from_numpy(m)).numpy()[0], ref, atol=1e-12)
    # The code's kernel: offsets x = -5..4 (columns), y = 4..-5 (rows), sigma 10.
    xs, ys = np.meshgrid(np.arange(-5, 5), np.arange(4, -6, -1))
    g = np.exp(-(xs**2 + ys**2) / 200.0)
    np.testing.assert_allclose(k, g / g.sum(), atol=1e-15)
