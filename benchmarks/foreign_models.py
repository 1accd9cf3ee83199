"""slimkit vs Torch-Pruning on architectures nobody here wrote (timm, torchvision, test patterns).

For every architecture, random weights at a small input, the way a user calls each library with the
classifier left alone (``ignore=[model.classifier]`` / ``ignored_layers=[...]``):

* slimkit: groups found, groups pruned, groups left unpruned (with the reasons), failures (an
  exception from ``prune_model``: should never happen), and the largest relative difference
  between the pruned model and the original with the same channels zeroed in every coupled place;
* Torch-Pruning 1.6.1 (``MetaPruner``, L1 magnitude, the same ratio): whether it finishes, whether
  the pruned model runs, and the same masked-vs-pruned difference for the channels it removed.

Norm layers get random statistics and affine parameters (and layers random biases) so that every
channel carries signal. A difference above 1e-4 (relative to the output scale) means a model whose
outputs are not those of the masked original (a wrong coupling). Sources that are not installed are skipped: timm (``pip install --no-deps timm``
plus huggingface_hub, pyyaml, safetensors, pillow; if torchvision does not import, a stub is put
in its place for timm's imports), torchvision (or ``--torchvision-src DIR``: a directory where a
torchvision wheel was unpacked, whose pure-Python model files are loaded without its compiled ops),
onnx2torch (plus onnx; models exported to ONNX and converted back, with their buffers and fixed
reshapes).

    OMP_NUM_THREADS=1 python benchmarks/foreign_models.py --source timm,torchvision,onnx2torch,patterns \
        [--models resnet18,dpn68] [--size 64] [--ratio 0.3] [--no-tp] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import signal
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "prune")]

from coupling_check import randomize_norms  # noqa: E402

from slimkit.prune import compare_pruned, find_groups, prune_model  # noqa: E402
from slimkit.prune.groups import ChannelGroup, GroupMember  # noqa: E402
from slimkit.prune.plan import GroupPlan, PrunePlan  # noqa: E402

TIMM = [
    "mobilenetv3_small_050", "mobilenetv3_large_100", "efficientnet_b0", "tf_efficientnet_lite0",
    "regnetx_002", "regnety_002", "densenet121", "rexnet_100", "mixnet_s", "cspresnet50",
    "cspdarknet53", "ghostnet_100", "dpn68", "convnext_atto", "resnet18", "resnet50d",
    "fasternet_t0", "res2net50_14w_8s", "lcnet_050", "hrnet_w18_small",
]  # fmt: skip
TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf",
    "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "mnasnet0_5",
    "googlenet", "vgg11_bn", "alexnet", "convnext_tiny",
]  # fmt: skip
ONNX2TORCH = ["resnet18", "mobilenet_v2", "squeezenet1_0", "shufflenet_v2_x0_5", "efficientnet_b0"]
ONNX2TORCH_PATTERNS = ["ConstantBuffers", "FixedShapeHead", "DPNLike", "ConvNeXtLike"]
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------ model sources
class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any ``torchvision.*`` import yields an empty module whose attributes are dummy classes
    (timm imports a few names from torchvision at import time but its models do not use them)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []  # type: ignore[attr-defined]
        module.__getattr__ = _dummy_class  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _DummyMeta(type):
    """Every attribute of a dummy class is another distinct dummy class."""

    def __getattr__(cls, name: str) -> type:
        return _dummy_class(name)


def _dummy_class(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return _DummyMeta(name, (), {})


def import_timm() -> Any | None:
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        if "torchvision" not in str(err) and "nms" not in str(err):
            return None
    except RuntimeError:
        pass
    for name in [n for n in sys.modules if n == "timm" or n.startswith(("timm.", "torchvision"))]:
        del sys.modules[name]
    sys.meta_path.insert(0, _StubFinder())
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


def import_torchvision_models(src: str | None) -> Callable[[str], nn.Module] | None:
    """``torchvision.models.get_model``, or a loader of the pure-Python files under ``src``."""
    if src is None:
        try:
            from torchvision import models
        except Exception:
            return None
        return lambda name: models.get_model(name, weights=None)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _StubFinder)]
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
        del sys.modules[name]  # timm's stand-in, if timm came first
    pkg = os.path.join(src, "torchvision")
    for name, sub in (
        ("torchvision", ""),
        ("torchvision.ops", "ops"),
        ("torchvision.models", "models"),
    ):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(pkg, sub)]  # type: ignore[attr-defined]
        sys.modules[name] = module
    ops = sys.modules["torchvision.ops"]
    ops.StochasticDepth = importlib.import_module(
        "torchvision.ops.stochastic_depth"
    ).StochasticDepth  # type: ignore[attr-defined]
    families = {"resnet": "resnet", "resnext": "resnet", "wide_resnet": "resnet", "mobilenet_v2": "mobilenetv2",
                "mobilenet_v3": "mobilenetv3", "efficientnet": "efficientnet", "regnet": "regnet",
                "shufflenet": "shufflenetv2", "squeezenet": "squeezenet", "densenet": "densenet",
                "mnasnet": "mnasnet", "googlenet": "googlenet", "vgg": "vgg", "alexnet": "alexnet",
                "convnext": "convnext", "inception": "inception"}  # fmt: skip

    def build(name: str) -> nn.Module:
        family = next(f for p, f in families.items() if name.startswith(p))
        module = importlib.import_module(f"torchvision.models.{family}")
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        return getattr(module, name)(weights=None, **kwargs)

    return build


def onnx2torch_models(
    args: argparse.Namespace, wanted: set[str] | None
) -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    """torchvision and pattern models exported to ONNX and converted back by onnx2torch (the
    way a user brings a model that only exists as an ONNX file)."""
    try:
        import onnx2torch
    except ImportError as err:
        if "torchvision" not in str(err):
            print("onnx2torch: not installed, skipped")
            return
        sys.meta_path.insert(0, _StubFinder())
        import onnx2torch
    import pattern_models

    build = import_torchvision_models(args.torchvision_src)
    makers: dict[str, Callable[[], nn.Module]] = {
        n: getattr(pattern_models, n) for n in ONNX2TORCH_PATTERNS
    }
    if build is not None:
        makers.update({n: (lambda n=n: build(n)) for n in ONNX2TORCH})
    folder = Path(args.work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in makers.items():
        if wanted is not None and name not in wanted:
            continue

        def convert(name: str = name, make: Callable[[], nn.Module] = make) -> nn.Module:
            path = folder / f"{name}.onnx"
            torch.manual_seed(0)
            model = randomize_norms(make().eval())
            x = torch.randn(1, 3, args.size, args.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
            return onnx2torch.convert(str(path))

        yield "onnx2torch", name, convert


def classifier_of(model: nn.Module) -> nn.Module:
    """The layer that produces the logits (left alone by both libraries)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]


def sources(args: argparse.Namespace) -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    wanted = set(args.models.split(",")) if args.models else None
    picked = set(args.source.split(","))
    if "timm" in picked:
        timm = import_timm()
        if timm is None:
            print("timm: not installed, skipped")
        for name in TIMM if timm is not None else ():
            if wanted is None or name in wanted:
                yield (
                    "timm",
                    name,
                    lambda n=name: timm.create_model(n, pretrained=False, num_classes=10),
                )
    if "torchvision" in picked:
        build = import_torchvision_models(args.torchvision_src)
        if build is None:
            print("torchvision: not importable (try --torchvision-src), skipped")
        for name in TORCHVISION if build is not None else ():
            if wanted is None or name in wanted:
                yield "torchvision", name, lambda n=name: build(n)
    if "onnx2torch" in picked:
        yield from onnx2torch_models(args, wanted)
    if "patterns" in picked:
        import pattern_models

        for cls in pattern_models.PATTERN_MODELS:
            if wanted is None or cls.__name__ in wanted:
                yield "patterns", cls.__name__, cls


# --------------------------------------------------------------------------------- measuring
LIMIT = 300  # seconds per library and architecture (--limit)


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (Unix)."""

    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_slimkit(model: nn.Module, x: torch.Tensor, head: nn.Module, ratio: float) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        with time_limit(LIMIT), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = find_groups(model, x, ignore=[head])
            pruned, plan = prune_model(model, ratio, x, ignore=[head], return_plan=True)
        row["found"] = len(report.groups) + len(report.unpruned)
        row["pruned"] = sum(1 for e in plan.groups if e.dropped)
        row["unpruned"] = dict(plan.unpruned)
        row["diff"] = compare_pruned(model, report.groups, pruned, plan, x)
        row["params"] = [_params(model), _params(pruned)]
    except Exception as err:
        row["failed"] = f"{type(err).__name__}: {err}"[:300]
        traceback.print_exc(limit=3)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def run_torch_pruning(
    model: nn.Module, x: torch.Tensor, head: nn.Module, ratio: float
) -> dict[str, Any]:
    """MetaPruner step by step, recording each group's channels in original indices."""
    import torch_pruning as tp

    original, row = copy.deepcopy(model), {}
    start = time.perf_counter()
    try:
        with time_limit(LIMIT), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio, ignored_layers=[head],
            )  # fmt: skip
            members, groups = [], 0
            tracker = _Tracker(pruner.DG, model)
            for group in pruner.step(interactive=True):
                members.extend(tracker.members(group))
                group.prune()
                groups += 1
        row["pruned"] = groups
        with torch.no_grad():
            shapes = [o.shape for o in _flat(model.eval()(x))]
            want = [o.shape for o in _flat(original.eval()(x))]
        row["runs"] = shapes == want
        fake = ChannelGroup("tp", head, 2, tuple(members), (), None)
        plan = PrunePlan("tp", (GroupPlan("tp", 2, (1,)),))
        row["diff"] = compare_pruned(original, [fake], model, plan, x)
    except Exception as err:
        row["failed"] = f"{type(err).__name__}: {err}"[:200]
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


class _Tracker:
    """Maps Torch-Pruning's indices (in the current, partly pruned model) to original ones."""

    def __init__(self, dg: Any, model: nn.Module) -> None:
        self.dg, self.alive = dg, {}
        self.names = {m: n for n, m in model.named_modules()}

    def members(self, group: Any) -> list[GroupMember]:
        out = []
        for dep, idxs in group:
            node = dep.target
            if node.type in (tp_ops().ELEMENTWISE, tp_ops().CONCAT, tp_ops().SPLIT, tp_ops().RESHAPE,
                             tp_ops().SLICE, tp_ops().UNBIND, tp_ops().EXPAND, tp_ops().OUTPUT):  # fmt: skip
                continue
            is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
            param = node.type == tp_ops().PARAMETER
            name = self.dg._param_to_name[node.module] if param else self.names[node.module]
            key = (is_out, name)
            if key not in self.alive:
                size = self.dg.get_out_channels(node) if is_out else self.dg.get_in_channels(node)
                self.alive[key] = list(range(size))
            alive, drop = self.alive[key], set(idxs)
            original = tuple(alive[i] for i in sorted(drop))
            self.alive[key] = [c for i, c in enumerate(alive) if i not in drop]
            kind = "out" if is_out else "in"
            dim = node.pruning_dim if param else None
            out.append(GroupMember(name, node.module, kind, original, (0,) * len(original), dim))
        return out


def tp_ops() -> Any:
    import torch_pruning as tp

    return tp.ops.OPTYPE


def _flat(out: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------- reporting
def summary(reasons: dict[str, str]) -> str:
    """``3 (fixed channel bounds: 2, reshapes: 1)``."""
    kinds: dict[str, int] = {}
    for reason in reasons.values():
        key = next((k for k in _REASONS if k in reason), "other")
        kinds[_REASONS.get(key, key)] = kinds.get(_REASONS.get(key, key), 0) + 1
    inner = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
    return f"{len(reasons)} ({inner})" if reasons else "0"


_REASONS = {
    "fixed channel bounds": "fixed slice bounds",
    "fixed sizes": "fixed split sizes",
    "breaks the model": "fails when pruned",
    "differs from the masked": "masked != pruned",
    "made during the forward": "constant tensor",
    "reshapes": "reshape",
    "works across the channel": "channel reduction",
    "is not supported": "unsupported layer",
    "cannot follow": "unknown op",
    "different sizes": "uneven ties",
}


def print_row(source: str, name: str, sk: dict[str, Any], tpr: dict[str, Any] | None) -> None:
    if "failed" in sk:
        ours = f"FAILED {sk['failed'][:90]}"
    else:
        ratio = sk["params"][1] / sk["params"][0]
        ours = (
            f"found {sk['found']:3d} pruned {sk['pruned']:3d} unpruned {summary(sk['unpruned'])}"
            f" | params {ratio:.0%} | max|masked-pruned| {sk['diff']:.1e}"
        )
    line = f"{source:11s} {name:24s} slimkit {ours} ({sk['seconds']}s)"
    if tpr is not None:
        if "failed" in tpr:
            theirs = f"FAILED {tpr['failed'][:80]}"
        else:
            theirs = (
                f"pruned {tpr['pruned']:3d} runs {tpr['runs']} max|masked-pruned| {tpr['diff']:.1e}"
            )
        line += f" || Torch-Pruning {theirs} ({tpr['seconds']}s)"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="timm,torchvision,onnx2torch,patterns")
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    parser.add_argument("--torchvision-src", default=None)
    parser.add_argument("--work-dir", default="/tmp/slimkit_foreign", help="for ONNX files")
    parser.add_argument("--json", default=None, help="write all rows to this file")
    parser.add_argument("--limit", type=int, default=LIMIT, help="seconds per library and model")
    args = parser.parse_args()
    globals()["LIMIT"] = args.limit
    torch.set_num_threads(1)
    rows = []
    for source, name, make in sources(args):
        torch.manual_seed(0)
        model = randomize_norms(make().eval())  # live activations: BN/LN statistics not identity
        x = torch.randn(1, 3, args.size, args.size)
        sk = run_slimkit(model, x, classifier_of(model), args.ratio)
        tpr = None
        if not args.no_tp:
            fresh = copy.deepcopy(model)
            tpr = run_torch_pruning(fresh, x, classifier_of(fresh), args.ratio)
        print_row(source, name, sk, tpr)
        rows.append({"source": source, "name": name, "slimkit": sk, "torch_pruning": tpr})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    _totals(rows)


def _totals(rows: list[dict[str, Any]]) -> None:
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        ok = sum(1 for r in mine if "failed" not in r["slimkit"] and r["slimkit"]["pruned"] > 0
                 and r["slimkit"]["diff"] <= TOLERANCE)  # fmt: skip
        wrong = sum(1 for r in mine if r["slimkit"].get("diff", 0) > TOLERANCE)
        line = f"{source}: slimkit pruned {ok}/{len(mine)} correctly, {wrong} wrong"
        theirs = [r["torch_pruning"] for r in mine if r["torch_pruning"] is not None]
        if theirs:
            tp_ok = sum(1 for t in theirs if "failed" not in t and t["runs"] and t["pruned"] > 0)
            tp_right = sum(
                1 for t in theirs if "failed" not in t and t["runs"] and t["diff"] <= TOLERANCE
            )
            line += (
                f"; Torch-Pruning pruned {tp_ok}/{len(theirs)} (runs), {tp_right} equal to masked"
            )
        print(line)


if __name__ == "__main__":
    main()
