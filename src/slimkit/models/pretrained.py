"""Built-in pretrained weights: what ``pretrain_weights="BUILTIN"`` loads (PaddleX's ``"IMAGENET"``).

slimkit trains them itself (``tools/pretrain_builtin.py``) on larger generated sets than the demo's,
with more shape kinds (``slimkit.data.generate.PRETRAIN_CLASSES``), and ships them in the package
as float16 safetensors under ``slimkit/pretrained/``, one file per architecture and width, listed in
``manifest.json`` with their SHA-256, the model options they fit and what they were trained on.
The task heads (the model's ``prune_ignore`` layers: classifier, YOLO output convs, UNet logit
conv) are not shipped: they depend on the number of classes and start from their usual init.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._registry import model_spec

__all__ = ["BUILTIN", "builtin_entry", "list_builtin", "load_builtin", "save_builtin"]

BUILTIN = "BUILTIN"
MANIFEST = "manifest.json"


def _package_dir() -> Path:
    return Path(str(resources.files("slimkit") / "pretrained"))


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def list_builtin(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The shipped entries: ``{key, architecture, model_kwargs, file, sha256, trained_on, ...}``."""
    manifest = _read_manifest(Path(root) if root is not None else _package_dir())
    return [{"key": k, **v} for k, v in sorted(manifest.items())]


def _full_kwargs(architecture: str, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {**model_spec(architecture).defaults, **model_kwargs}


def builtin_entry(
    architecture: str, model_kwargs: Mapping[str, Any], root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The manifest entry whose architecture and options fit a model.

    An entry fits when every option it records (e.g. ``width_mult``) equals the model's (factory
    defaults filling in what the model was not given); other options (anchors, input size) do not
    change the shipped tensors.

    Raises:
        ValueError: Nothing ships for this architecture and these options (lists what does).
    """
    wanted = _full_kwargs(architecture, model_kwargs)
    entries = list_builtin(root)
    for entry in entries:
        if entry["architecture"] == architecture and all(
            wanted.get(k) == v for k, v in entry["model_kwargs"].items()
        ):
            return entry
    shipped = [f"{e['architecture']} {e['model_kwargs']}" for e in entries] or ["none"]
    raise ValueError(
        f"no built-in (BUILTIN) pretrained weights for {architecture} with "
        f"{ {k: wanted.get(k) for k in ('width_mult', 'neck_width', 'base_channels') if k in wanted} }"
        f"; shipped: {'; '.join(shipped)}. Train from scratch (pretrain_weights=None) or pass a "
        "model directory"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def load_builtin(
    net: nn.Module,
    architecture: str,
    model_kwargs: Mapping[str, Any],
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Copy the built-in weights into ``net`` (everything but its ``prune_ignore`` heads).

    Args:
        net: A freshly built zoo model of ``architecture`` with ``model_kwargs``.
        architecture: Its registry name.
        model_kwargs: Its options (as passed to ``create_model``, ``num_classes`` aside).
        root: Folder of ``manifest.json`` and the weight files (default: the package's).

    Returns:
        The manifest entry that was loaded.

    Raises:
        ValueError: Nothing ships for this model; the file is missing, its checksum differs from
            the manifest's, or a tensor is missing or has another shape than the model's.
    """
    from safetensors.torch import load_file

    folder = Path(root) if root is not None else _package_dir()
    entry = builtin_entry(architecture, model_kwargs, folder)
    path = folder / entry["file"]
    if not path.is_file():
        raise ValueError(f"built-in weights {str(path)!r} are missing; reinstall slimkit")
    if _sha256(path) != entry["sha256"]:
        raise ValueError(
            f"built-in weights {str(path)!r} do not match their SHA-256 in {MANIFEST} "
            "(corrupt or replaced file); reinstall slimkit"
        )
    shipped = load_file(str(path))
    skip = tuple(getattr(net, "prune_ignore", ()))
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in state if not _skipped(k, skip)}
    problems = sorted(expected.symmetric_difference(shipped))[:5]
    problems += [
        f"{k}: {tuple(shipped[k].shape)} vs {tuple(state[k].shape)}"
        for k in sorted(expected & set(shipped))
        if shipped[k].shape != state[k].shape
    ][:5]
    if problems:
        raise ValueError(
            f"built-in weights {entry['file']} do not fit this {architecture} model "
            f"(missing, extra or misshaped tensors: {problems}); were its layers changed?"
        )
    with torch.no_grad():
        for name, tensor in shipped.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return entry


def save_builtin(
    net: nn.Module,
    architecture: str,
    model_kwargs: Mapping[str, Any],
    root: str | os.PathLike,
    trained_on: str,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``net``'s weights (heads excluded) as float16 safetensors and record them.

    Used by ``tools/pretrain_builtin.py``. The file is named after the model's sensitivity key
    (``mobilenetv2_w1.safetensors``); its manifest entry records the options in ``model_kwargs``.

    Returns:
        The manifest entry written.
    """
    from safetensors.torch import save_file

    from slimkit._io import atomic_file, atomic_write_json

    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    key = model_spec(architecture).sensitivity_name(model_kwargs)
    if "neck_width" in model_kwargs:
        key += f"_n{float(model_kwargs['neck_width']):g}"
    skip = tuple(getattr(net, "prune_ignore", ()))
    tensors = {
        k: v.detach().cpu().to(torch.float16).contiguous()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked") and not _skipped(k, skip)
    }
    path = folder / f"{key}.safetensors"
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; package data must be readable
    entry = {
        "architecture": architecture,
        "model_kwargs": dict(model_kwargs),
        "file": path.name,
        "sha256": _sha256(path),
        "tensors": len(tensors),
        "trained_on": trained_on,
        "metrics": dict(metrics or {}),
    }
    manifest = _read_manifest(folder)
    manifest[key] = entry
    atomic_write_json(folder / MANIFEST, manifest, indent=1, sort_keys=True)
    return entry
