"""fastdehaze.nn VGG19Features / ContrastLoss / C2RLoss / IICLLoss: parity with an eager VGG19
forward and the SPEC formulas (as AECR-Net writes them) on the same random weights and inputs."""
import copy
import warnings

import pytest
import torch
from torch import nn

import fastdehaze.nn as fnn
from fastdehaze.nn.vgg import VGG19_SLICES

CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]
LW = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fnn.VGG19Features()


@pytest.fixture(scope="module")
def vgg64(vgg):
    """The same random weights in float64: parity checks the loss, not float32 conv rounding
    (oneDNN picks per-batch-size algorithms, so a batched VGG forward differs at ~1e-4)."""
    return copy.deepcopy(vgg).double()


class EagerVgg19(nn.Module):
    """AECR-Net's Vgg19: slices of torchvision's features, here over the same module objects."""

    def __init__(self, features):
        super().__init__()
        self.slices = [nn.Sequential(*[features[i] for i in range(lo, hi)]) for lo, hi in VGG19_SLICES]

    def forward(self, x):
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out


def eager_contrast(vgg_eager, a, p, negs, w=None, ablation=False):
    """AECR-Net / C2PNet ContrastLoss as they write it: nn.L1Loss per layer and negative."""
    l1 = nn.L1Loss()
    a_vgg, p_vgg = vgg_eager(a), vgg_eager(p)
    n_vgg = [vgg_eager(n) for n in negs]
    w = w or [1.0] * len(negs)
    loss = 0
    for i in range(len(a_vgg)):
        d_ap = l1(a_vgg[i], p_vgg[i].detach())
        if ablation:
            loss += LW[i] * d_ap
            continue
        den = 0
        for wk, nv in zip(w, n_vgg):
            den = den + wk * l1(a_vgg[i], nv[i].detach())
        loss += LW[i] * d_ap / (den + 1e-7)
    return loss


def tiny_net(seed=1, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).to(dtype)


def _images(B=2, H=32, W=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hazy = torch.rand(B, 3, H, W, generator=g, dtype=dtype)
    clear = torch.rand(B, 3, H, W, generator=g, dtype=dtype)
    return hazy, clear


def _grads(net):
    return [p.grad.clone() for p in net.parameters()]


# ---- VGG19Features -------------------------------------------------------------------------------

def test_vgg_layout_and_weights_file(tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="RANDOM"):
        v = fnn.VGG19Features()
    assert [i for i, m in enumerate(v.features) if isinstance(m, nn.Conv2d)] == CONV_IDX
    assert [i for i, m in enumerate(v.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 18, 27]
    # a torchvision-format state dict of the whole model (classifier and layers >= 30 ignored)
    sd = {f"features.{i}.{n}": torch.randn_like(t) for i in CONV_IDX for n, t in v.features[i].state_dict().items()}
    sd["features.30.weight"] = torch.randn(512, 512, 3, 3)
    sd["classifier.0.weight"] = torch.randn(4096, 25088 // 64)
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v1 = fnn.VGG19Features(str(path))
        monkeypatch.setenv("FASTDEHAZE_VGG19_WEIGHTS", str(path))
        v2 = fnn.VGG19Features()
    for v_ in (v1, v2):
        assert v_.pretrained
        torch.testing.assert_close(v_.features[28].weight, sd["features.28.weight"], rtol=0, atol=0)
        torch.testing.assert_close(v_.features[0].bias, sd["features.0.bias"], rtol=0, atol=0)
    monkeypatch.delenv("FASTDEHAZE_VGG19_WEIGHTS")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fnn.VGG19Features(str(tmp_path / "missing.pth"))
    bad = dict(sd)
    del bad["features.5.weight"]
    with pytest.raises(ValueError, match="weights"):
        fnn.VGG19Features(bad)


def test_vgg_frozen_eval_shapes(vgg):
    vgg.train()
    assert not vgg.training and all(not m.training for m in vgg.modules())
    assert all(not p.requires_grad for p in vgg.parameters())
    x = torch.rand(1, 3, 32, 48, requires_grad=True)
    f = vgg(x)
    assert [tuple(t.shape) for t in f] == [(1, 64, 32, 48), (1, 128, 16, 24), (1, 256, 8, 12), (1, 512, 4, 6),
                                           (1, 512, 2, 3)]
    f[-1].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in vgg.parameters())


# ---- ContrastLoss / C2RLoss parity ----------------------------------------------------------------

@pytest.mark.parametrize("ablation", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contrast_loss_parity(backend_device, vgg, vgg64, ablation, dtype):
    b, dev = backend_device
    vgg = vgg64 if dtype == torch.float64 else vgg
    vgg = vgg if dev == "cpu" else copy.deepcopy(vgg).to(dev)  # the fixtures stay on the CPU
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-6)
    hazy, clear = (t.to(dev) for t in _images(dtype=dtype))
    net = tiny_net(dtype=dtype).to(dev)
    loss_mod = fnn.ContrastLoss(ablation=ablation, vgg=vgg, backend=b)
    loss_mod.train()  # the VGG inside stays in eval mode
    assert not loss_mod.vgg.training
    out = net(hazy)
    loss = loss_mod(out, clear, hazy)
    loss.backward()
    g_fused = _grads(net)
    net.zero_grad()
    ref = eager_contrast(EagerVgg19(vgg.features), net(hazy), clear, [hazy], ablation=ablation)
    ref.backward()
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, ref, **tol)
    for x, y in zip(g_fused, _grads(net)):
        torch.testing.assert_close(x, y, **tol)
    assert all(p.grad is None for p in vgg.parameters())
    assert any(x.abs().sum() > 0 for x in g_fused)


def test_contrast_loss_unbatched_equals_batched(vgg):
    hazy, clear = _images(B=1, seed=4, dtype=torch.float32)
    a = (hazy * 0.5 + clear * 0.5).requires_grad_()
    l1 = fnn.ContrastLoss(vgg=vgg, batch_no_grad=True)(a, clear, hazy)
    l2 = fnn.ContrastLoss(vgg=vgg, batch_no_grad=False)(a, clear, hazy)
    # same value up to float32 convolution rounding (oneDNN picks per-batch-size algorithms)
    torch.testing.assert_close(l1, l2, rtol=1e-3, atol=0)


def test_c2r_loss_parity(vgg64):
    vgg = vgg64
    hazy, clear = _images(B=1, H=32, W=32, seed=2)
    g = torch.Generator().manual_seed(7)
    others = [torch.rand(hazy.shape, generator=g, dtype=hazy.dtype) for _ in range(2)]
    w = (0.5, 0.3, 0.2)
    net = tiny_net(3)
    loss = fnn.C2RLoss(negative_weights=w, vgg=vgg)(net(hazy), clear, [hazy] + others)
    loss.backward()
    gf = _grads(net)
    net.zero_grad()
    ref = eager_contrast(EagerVgg19(vgg.features), net(hazy), clear, [hazy] + others, w=list(w))
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    for x, y in zip(gf, _grads(net)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="negatives"):
        fnn.C2RLoss(vgg=vgg)(clear, clear, [])


# ---- IICLLoss parity --------------------------------------------------------------------------------

def eager_iicl(vgg_eager, out, clear, hazy, patch, k, lambda_intra=1.0):
    """SPEC sections 3-4 written out eagerly: rank the patches of the hazy input by mean luma
    (unfold + stable sort), cut the same windows from out/clear/hazy, AECR ratios."""
    B, C, H, W = hazy.shape
    luma = 0.299 * hazy[:, 0] + 0.587 * hazy[:, 1] + 0.114 * hazy[:, 2]
    scores = luma.unfold(1, patch, patch).unfold(2, patch, patch).mean((-1, -2)).reshape(B, -1)
    nW = (W - patch) // patch + 1
    bright = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    dark = torch.sort(scores, dim=1, stable=True).indices[:, :k]

    def cut(x, idx):
        return torch.stack([x[b, :, (int(i) // nW) * patch:(int(i) // nW) * patch + patch,
                              (int(i) % nW) * patch:(int(i) % nW) * patch + patch]
                            for b in range(B) for i in idx[b]])

    inter = eager_contrast(vgg_eager, out, clear, [hazy])
    intra = sum(eager_contrast(vgg_eager, cut(out, idx), cut(clear, idx), [cut(hazy, idx)]) for idx in (bright, dark))
    return inter + lambda_intra * intra / 2


def _iicl_parity(vgg, b, hazy, clear, patch, k, lambda_intra=1.0):
    net = tiny_net(5).to(hazy.device)
    loss = fnn.IICLLoss(lambda_intra=lambda_intra, patch=patch, stride=patch, k=k, vgg=vgg, backend=b)(
        net(hazy), clear, hazy)
    loss.backward()
    gf = _grads(net)
    net.zero_grad()
    ref = eager_iicl(EagerVgg19(vgg.features), net(hazy), clear, hazy, patch, k, lambda_intra)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    for x, y in zip(gf, _grads(net)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in vgg.parameters())
    return loss


def test_iicl_loss_parity(backend_device, vgg64):
    b, dev = backend_device
    vgg = vgg64 if dev == "cpu" else copy.deepcopy(vgg64).to(dev)
    hazy, clear = (t.to(dev) for t in _images(B=2, H=32, W=32, seed=9))
    hazy[0, :, :16, 16:] *= 0.2  # a clearly darkest patch
    _iicl_parity(vgg, b, hazy, clear, patch=16, k=2, lambda_intra=0.7)


def test_iicl_loss_parity_real_crops(data_dir, vgg64):
    vgg = vgg64
    from PIL import Image
    import numpy as np
    hz = sorted((data_dir / "pairs" / "sots_indoor" / "hazy").glob("*"))
    gt_dir = data_dir / "pairs" / "sots_indoor" / "gt"
    if not hz:
        pytest.skip("no SOTS-indoor pairs")
    hs, cs = [], []
    for f in hz[:2]:
        gts = sorted(gt_dir.glob(f.stem.split("_")[0] + "*"))
        h = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).double() / 255
        c = torch.from_numpy(np.array(Image.open(gts[0]).convert("RGB"))).permute(2, 0, 1).double() / 255
        hs.append(h[:, 100:132, 200:232])
        cs.append(c[:, 100:132, 200:232])
    loss = _iicl_parity(vgg, "cpu", torch.stack(hs), torch.stack(cs), patch=16, k=1)
    assert torch.isfinite(loss)


def test_iicl_bad_input(vgg):
    hazy, clear = _images(B=1, H=32, W=32)
    with pytest.raises(ValueError, match="patch"):
        fnn.IICLLoss(patch=64, vgg=vgg)(hazy, clear, hazy)
    with pytest.raises(ValueError, match="output"):
        fnn.IICLLoss(patch=16, vgg=vgg)(hazy[0], clear, hazy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_half_images_with_float32_vgg(vgg, dtype):
    """The ops' convention: half images are computed in float32 (the VGG's dtype), the loss is
    float32 and the gradient reaches the half image in its dtype."""
    g = torch.Generator().manual_seed(5)
    a32, p32, n32 = (torch.rand(1, 3, 32, 32, generator=g) for _ in range(3))
    for make, args in ((lambda: fnn.ContrastLoss(vgg=vgg), lambda a, p, n: (a, p, n)),
                       (lambda: fnn.C2RLoss(vgg=vgg), lambda a, p, n: (a, p, [n, p * 0.5])),
                       (lambda: fnn.IICLLoss(patch=16, k=1, vgg=vgg), lambda a, p, n: (a, p, n))):
        loss = make()
        a = a32.to(dtype).requires_grad_()
        got = loss(*args(a, p32.to(dtype), n32.to(dtype)))
        want = loss(*args(a32.to(dtype).float(), p32.to(dtype).float(), n32.to(dtype).float()))
        assert got.dtype == torch.float32 and torch.isfinite(got)
        torch.testing.assert_close(got, want)
        got.backward()
        assert a.grad is not None and a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


def test_losses_grey_and_mismatched_images_name_the_argument(vgg):
    x = torch.rand(1, 3, 32, 32)
    grey = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"^a must be an RGB image.*expand"):
        fnn.ContrastLoss(vgg=vgg)(grey, x, x)
    with pytest.raises(ValueError, match=r"^n must be an RGB image"):
        fnn.ContrastLoss(vgg=vgg)(x, x, grey)
    with pytest.raises(ValueError, match=r"^negatives\[1\] must be an RGB image"):
        fnn.C2RLoss(vgg=vgg)(x, x, [x, grey])
    with pytest.raises(ValueError, match=r"^clear must be an RGB image"):
        fnn.IICLLoss(patch=16, vgg=vgg)(x, grey, x)
    with pytest.raises(ValueError, match=r"^hazy must have the shape"):
        fnn.IICLLoss(patch=16, vgg=vgg)(x, x, torch.rand(1, 3, 32, 33))
    with pytest.raises(ValueError, match=r"^p must be a floating"):
        fnn.ContrastLoss(vgg=vgg)(x, (x * 255).to(torch.uint8), x)
