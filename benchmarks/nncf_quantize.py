"""Quantize an ONNX model with NNCF's post-training quantization, for ``quant_speed.py``.

Runs in a side environment that has NNCF (slimkit does not depend on it)::

    /work/side/quant/bin/python benchmarks/nncf_quantize.py FP32.onnx CALIB.npz OUT.onnx

``CALIB.npz`` holds the calibration inputs ``x0, x1, ...`` (one array each, fed to the model's
first input). NNCF runs with its defaults (mixed preset for activations, fast bias correction on)
and ``subset_size`` = the number of calibration inputs. Imports nothing from slimkit.
"""

from __future__ import annotations

import sys


def main() -> None:
    import nncf
    import numpy as np
    import onnx

    fp32_path, calib_path, out_path = sys.argv[1:4]
    model = onnx.load(fp32_path)
    initializers = {i.name for i in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in initializers)
    with np.load(calib_path) as data:
        items = [data[f"x{k}"] for k in range(len(data.files))]
    dataset = nncf.Dataset(items, lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(items))
    onnx.save(quantized, out_path)


if __name__ == "__main__":
    main()
