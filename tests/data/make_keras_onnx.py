"""Make ``tests/data/keras_nhwc.onnx``: a small Keras classifier converted by tf2onnx, with what Keras
itself says about it, for ``tests/etm/test_onnx_inputs_outputs.py``.

TensorFlow is not a dependency of this project (it is a 600 MB install), so the converted file and the
reference values are committed; rerun this to regenerate them (the values then change with the seed):

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx
    /tmp/tfenv/bin/python tests/data/make_keras_onnx.py

The model takes channels-last [N, 32, 32, 3] images in [0, 1] (no normalisation layer: metadata mean 0,
std 1) and ends in a softmax, as Keras classifiers usually do. The reference: the softmax outputs and a
Grad-CAM by ``tf.GradientTape`` (gradient of the class-1 probability at the last convolution's output,
averaged over space, weighting that output; ReLU), for 4 seeded images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf2onnx

OUT = Path(__file__).resolve().parent


def main() -> None:
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((32, 32, 3), name="images")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    last = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="last_conv")(x)
    pooled = tf.keras.layers.GlobalAveragePooling2D()(last)
    probs = tf.keras.layers.Dense(2, activation="softmax", name="probs")(pooled)
    model = tf.keras.Model(inputs, probs)
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="images"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    OUT.mkdir(exist_ok=True)
    (OUT / "keras_nhwc.onnx").write_bytes(onnx_model.SerializeToString())

    images = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    features = tf.keras.Model(inputs, [last, probs])
    with tf.GradientTape() as tape:
        acts, out = features(images)
        score = out[:, 1]
    grads = tape.gradient(score, acts).numpy()  # [N, h, w, K]
    weights = grads.mean(axis=(1, 2))  # [N, K]
    cam = np.maximum(np.einsum("nk,nhwk->nhw", weights, acts.numpy()), 0)
    np.savez_compressed(OUT / "keras_nhwc_reference.npz", images=images, probs=out.numpy(), gradcam=cam)
    (OUT / "keras_nhwc.onnx.json").write_text(json.dumps({
        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "class_names": ["real", "synthetic"],
        "score_activation": "none",
    }))
    print(f"wrote {OUT}/keras_nhwc.onnx (tf {tf.__version__}, tf2onnx {tf2onnx.__version__})")


if __name__ == "__main__":
    main()
