"""`slimkit analyze|prune|quantize --model-def MODULE:FACTORY --weights FILE`: a network defined
outside slimkit goes through the same commands as the zoo, and its model directories load again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slimkit import load_model
from slimkit.cli import main
from slimkit.data.generate import make_dataset
from slimkit.models import _registry
from slimkit.models.external import import_factory, load_weights

USER_CODE = textwrap.dedent(
    '''
    """A network written by a user, nothing from slimkit."""
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))


    class UserNet(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.stem = Block(3, 16)
            self.a, self.b = Block(16, 24), Block(24, 16)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.b(self.a(x))  # residual: stem and b are one group
            return self.fc(x.mean((2, 3)))


    def build(num_classes=4):
        torch.manual_seed(0)
        return UserNet(num_classes)
    '''
)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Model definitions registered by a test do not leak into the registry of later tests."""
    before = dict(_registry._MODEL_SPECS)
    yield
    _registry._MODEL_SPECS.clear()
    _registry._MODEL_SPECS.update(before)


@pytest.fixture()
def user(tmp_path: Path) -> dict[str, Path]:
    code = tmp_path / "usernets.py"
    code.write_text(USER_CODE)
    net = import_factory(f"{code}:build")()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    data = tmp_path / "data"
    make_dataset("cls", data, num_train=8, num_val=8, image_size=32)
    return {"code": code, "st": tmp_path / "w.safetensors", "pt": tmp_path / "w.pt", "data": data}


def test_prune_analyze_quantize_a_model_defined_outside_slimkit(
    user: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(user["code"].parent))  # also importable as usernets:build
    own = ["--model-def", "usernets:build", "--input-size", "32"]
    out = tmp_path / "pruned"
    args = [*own, "--weights", str(user["st"]), "--num-classes", "4", "--ratios", "0.5"]
    assert main(["prune", *args, "--save-dir", str(out), "--verify", "--round-to", "0"]) == 0
    pruned = load_model(out)  # imports usernets:build again, re-applies the plan
    assert pruned.architecture == "usernets:build" and pruned.status == "Prune"
    assert pruned.net.a.conv.out_channels == 12 and pruned.net.stem.conv.out_channels == 8
    original = import_factory("usernets:build")()
    load_weights(original, user["pt"])
    assert sum(p.numel() for p in pruned.net.parameters()) < sum(
        p.numel() for p in original.parameters()
    )

    sens = tmp_path / "s.json"
    data = ["--data", str(user["data"])]
    assert (
        main(["analyze", *own, "--weights", str(user["pt"]), *data, "--save-file", str(sens)]) == 0
    )
    assert sens.is_file() and '"stem.conv"' in sens.read_text()

    quant = tmp_path / "int8"
    q_args = ["--weights", str(user["st"]), *data, "--batch-num", "2", "--save-dir", str(quant)]
    assert main(["quantize", *own, *q_args]) == 0
    assert load_model(quant).status == "Quant"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimkit.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model-def", "no_such_module:build"], "cannot import 'no_such_module'"),
        (["--model-def", "usernets"], "looks like pkg.module:factory"),
        (["--model-def", "{code}:nothing"], "has no 'nothing'"),
        (
            ["--model-def", "{code}:build", "--weights", "{pt}", "--num-classes", "7"],
            "does not fit",
        ),
        (["--model-def", "{code}:build"], "needs --num-classes"),
        (["{data}", "--model-def", "{code}:build"], "model.yml"),
        ([], "give a model directory or --model-def"),
    ],
)
def test_model_def_errors_are_one_line(
    user: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    extra = [e.format(code=user["code"], pt=user["pt"], data=user["data"]) for e in extra]
    result = run_cli("prune", *extra, "--ratios", "0.5", "--save-dir", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("slimkit: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_directory_saved_from_user_code_loads_only_when_trusted(
    user: dict[str, Path], tmp_path: Path
) -> None:
    """model.yml names code and its arguments: a fresh process imports it only when told to."""
    own = ["--model-def", f"{user['code']}:build", "--input-size", "32", "--num-classes", "4"]
    out = tmp_path / "pruned"
    args = ["--weights", str(user["st"]), "--ratios", "0.5", "--save-dir", str(out)]
    assert run_cli("prune", *own, *args).returncode == 0
    data = ["--data", str(user["data"])]
    refused = run_cli("evaluate", str(out), *data)
    assert refused.returncode == 2 and "defined outside slimkit" in refused.stderr
    assert "--model-def" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    trusted = run_cli("evaluate", str(out), *data, "--model-def", f"{user['code']}:build")
    assert trusted.returncode == 0, trusted.stderr
    assert '"acc1"' in trusted.stdout
    other = run_cli("evaluate", str(out), *data, "--model-def", "usernets:other")
    assert other.returncode == 2 and "was saved from it" in other.stderr


def test_a_crafted_model_yml_never_runs_its_code(tmp_path: Path) -> None:
    """A model.yml naming arbitrary code with arguments (here: a shell command) is refused."""
    import yaml

    from slimkit.tasks.loading import build_task

    marker = tmp_path / "ran"
    info = {
        "task": "cls",
        "architecture": "subprocess:getoutput",
        "num_classes": 2,
        "input_size": [32, 32],
        "model_kwargs": {"cmd": f"touch {marker}"},
    }
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.yml").write_text(yaml.safe_dump(info))
    with pytest.raises(ValueError, match="defined outside slimkit"):
        build_task(info)
    with pytest.raises(ValueError):
        load_model(tmp_path / "m")
    assert not marker.exists()
