"""Small models, data and helpers shared by the sensitivity tests."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.prune import UnprunedGroupsWarning
from slimkit.prune.sensitivity import analyze_sensitivity

RATIOS = (0.25, 0.5, 0.75)


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class CountedConv(nn.Conv2d):
    """A conv that counts its evaluation calls (class-wide, so pruned copies count too)."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountedConv.calls += torch.is_inference_mode_enabled()  # not the tracing by the pruner
        return super().forward(x)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(CountedConv(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = cbr(8, 16, 2)
        self.layer2 = nn.Sequential(cbr(16, 16), cbr(16, 16))
        self.layer3 = cbr(16, 24, 2)
        self.fc = nn.Linear(24, 5)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = x + self.layer2(x)  # residual: layer1 and layer2 outputs are coupled
        return self.fc(self.layer3(x).mean((2, 3)))


class TinyDetector(nn.Module):
    """Two feature levels, an upsample + concat neck and a tuple of head outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = cbr(3, 8), cbr(8, 16, 2), cbr(16, 24, 2)
        self.lateral = nn.Conv2d(24, 8, 1)
        self.fuse = cbr(16 + 8, 16)
        self.head_deep = nn.Conv2d(24, 6, 1)
        self.head_fine = nn.Conv2d(16, 6, 1)
        self.prune_ignore = ("head_deep", "head_fine")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.c2(self.c1(x))
        f3 = self.c3(f2)
        deep = self.head_deep(f3)
        up = F.interpolate(self.lateral(f3), size=f2.shape[-2:], mode="nearest")
        return deep, self.head_fine(self.fuse(torch.cat([up, f2], dim=1)))


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = cbr(3, 8), cbr(8, 16, 2), cbr(16, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec = cbr(16, 8)
        self.head = nn.Conv2d(8, 3, 1)
        self.prune_ignore = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        m = self.mid(s2) + s2
        return self.head(self.dec(torch.cat([self.up(m), s1], dim=1)))


class TinyTricky(nn.Module):
    """Tuple inputs, a block called twice, in-place ops on module outputs, a shape-only read."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(8, 8), cbr(8, 16, 2)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(16, 3)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        a.mul_(scale[:, None, None, None])  # in place on a cached output
        b = self.b(a)
        side = self.side(a)  # only its shape is used below
        c = self.c(b + a)
        c = self.shared(self.shared(c).relu_())  # called twice: never replayed
        return self.fc(c.mean((2, 3))) + side.shape[1]


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers trained-looking statistics, so that every channel matters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) * 0.4 - 0.2
            m.running_mean = torch.rand(n, generator=g) * 0.2 - 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def make_data(model: nn.Module, batches: int = 3, size: int = 16) -> list:
    """Batches whose targets are the unpruned model's outputs."""
    g = torch.Generator().manual_seed(2)
    data = []
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(4, 3, size, size, generator=g)
            if isinstance(model, TinyTricky):
                x = (x, torch.rand(4, generator=g) + 0.5)
                data.append((x, model(*x)))
            else:
                data.append((x, model(x)))
    return data


def closeness(outputs: list, targets: list) -> float:
    """1 / (1 + MSE) against the unpruned outputs: continuous, 1.0 for the unpruned model."""
    err, n = 0.0, 0
    for out, tgt in zip(outputs, targets, strict=True):
        outs = out if isinstance(out, tuple) else (out,)
        outs[-1].mul_(1.0)  # a metric may write to the outputs it gets
        tgts = tgt if isinstance(tgt, tuple) else (tgt,)
        for o, t in zip(outs, tgts, strict=True):
            err += float(((o - t) ** 2).sum())
            n += t.numel()
    return 1.0 / (1.0 + err / n)


def analyze(model: nn.Module, data: list, **kw) -> dict:
    kw.setdefault("ratios", RATIOS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path must not fall back to full evaluation
        # groups discovery cannot prove are reported (and left out) before any evaluation
        warnings.simplefilter("always", UnprunedGroupsWarning)
        return analyze_sensitivity(model, data, closeness, progress=False, **kw)


def assert_same(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for g in a:
        assert a[g].keys() == b[g].keys(), g
        for r in a[g]:
            assert (a[g][r] is None) == (b[g][r] is None), (g, r)
            if a[g][r] is not None:
                assert abs(a[g][r] - b[g][r]) <= tol, (g, r, a[g][r], b[g][r])
