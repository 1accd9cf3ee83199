"""Produce the built-in (DEFAULT) sensitivity files shipped in ``src/slimkit/sensitivities/``.

For each demo architecture: generate the built-in *reference* dataset with seed 1 (the demo and the
tests use seed 0, so DEFAULT is computed on other images of the same distribution, as PaddleX's were
computed on ImageNet / VOC / Cityscapes rather than on the user's data), train the model with the
demo's settings, run the sensitivity analysis on the reference validation split and copy the file
into the package under its architecture+width key.

    .venv/bin/python tools/make_default_sensitivities.py --out /tmp/slimkit_ref [--tasks cls,det,seg]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from slimkit.demo import CONFIGS, analyze, prepare_data, train_original
from slimkit.tasks.loading import load_model

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "slimkit" / "sensitivities"
REFERENCE_SEED = 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/slimkit_ref")
    p.add_argument("--tasks", default="cls,det,seg")
    args = p.parse_args()
    out = Path(args.out)
    for task in args.tasks.split(","):
        cfg = CONFIGS[task]
        train_ds, val_ds = prepare_data(cfg, out / "data" / task, seed=REFERENCE_SEED)
        original = train_original(cfg, train_ds, val_ds, out / task)
        sens = analyze(cfg, original, val_ds, out / task / "model.sensi.json")
        target = PACKAGE_DIR / f"{load_model(original).sensitivity_key}.json"
        shutil.copyfile(sens, target)
        print(f"{task}: wrote {target}")


if __name__ == "__main__":
    main()
