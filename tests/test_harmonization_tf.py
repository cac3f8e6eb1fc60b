"""The harmonization loss against the authors' TensorFlow code (``harmonization`` 0.0.9, serre-lab). Opt-in.

TensorFlow does not go into the package's environment: the test creates a separate virtual environment with
``tensorflow-cpu``, ``tf-keras`` (the authors' code needs Keras 2: ``tf.keras.losses.Reduction``) and
``harmonization`` (without its dependencies: only its ``training`` module is used, imported without the package's
``__init__``, which would pull in its model zoo). Creating it downloads about 600 MB and installs 2 GB, which takes
minutes, so the test runs only when ``SKLEARN_AIS_TEST_TENSORFLOW=1``; the environment is kept (default
``~/.cache/sklearn-ais/harmonization-tf``, or ``SKLEARN_AIS_TF_ENV``) and reused by later runs. When it cannot be
created (offline, no wheel for this Python) the test is skipped with pip's message.

The same small network (conv - batch norm - tanh - conv - tanh - global average pool - dense) is built in Keras and in
PyTorch with the same weights; the authors' ``harmonizer_loss`` gives the parameter gradient, and the loss value is
computed from their functions (``standardize_cut``, ``pyramidal_mse_with_tokens``, their cross-entropy, the
``tf.nn.l2_loss`` weight term) exactly as ``harmonizer_loss`` composes them (it returns only the gradient).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_ais.alignment import harmonization_loss

pytestmark = pytest.mark.skipif(
    os.environ.get("SKLEARN_AIS_TEST_TENSORFLOW") != "1",
    reason="opt-in: set SKLEARN_AIS_TEST_TENSORFLOW=1 to compare with the authors' TensorFlow code "
           "(creates a ~2 GB environment with tensorflow-cpu on first use)",
)

ENV = Path(os.environ.get("SKLEARN_AIS_TF_ENV", Path.home() / ".cache" / "sklearn-ais" / "harmonization-tf"))

SCRIPT = textwrap.dedent(
    """
    import os, sys, types, importlib.util
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import numpy as np
    import tensorflow as tf
    spec = importlib.util.find_spec("harmonization")
    pkg = types.ModuleType("harmonization")  # the package without its __init__ (which imports the model zoo)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["harmonization"] = pkg
    from harmonization.training import harmonizer_loss, standardize_cut, pyramidal_mse_with_tokens
    from harmonization.training.loss import Cross_entropy

    d = np.load(sys.argv[1])
    L = tf.keras.layers
    inp = L.Input((32, 32, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(epsilon=1e-5, name="conv1_bn")(x)
    x = L.Activation("tanh")(x)
    x = L.Conv2D(5, 3, padding="same", name="conv2")(x)
    x = L.Activation("tanh")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(3, name="fc")(x)
    model = tf.keras.Model(inp, out)
    model.get_layer("conv1").set_weights([d["conv1_w"], d["conv1_b"]])
    bn = model.get_layer("conv1_bn")
    bn.set_weights([d["bn_g"], d["bn_b"], np.zeros(4, np.float32), np.ones(4, np.float32)])
    model.get_layer("conv2").set_weights([d["conv2_w"], d["conv2_b"]])
    model.get_layer("fc").set_weights([d["fc_w"], d["fc_b"]])

    images = tf.constant(d["images"]); labels = tf.constant(d["labels"])
    tokens = tf.constant(d["tokens"]); maps = tf.constant(d["maps"])
    grads = harmonizer_loss(model, images, tokens, labels, maps)

    # The value: harmonizer_loss's own composition of the authors' functions.
    with tf.GradientTape() as tape:
        tape.watch(images)
        y_pred = model(images, training=True)
        picked = tf.reduce_sum(y_pred * labels, -1)
    sa = tf.reduce_mean(tf.cast(tape.gradient(picked, images), tf.float32), -1)
    sa_p = standardize_cut(sa)
    hm_p = standardize_cut(maps)
    hm_p = hm_p / (tf.math.reduce_max(hm_p, (1, 2), keepdims=True) + 1e-6) * (
        tf.stop_gradient(tf.math.reduce_max(sa_p, (1, 2), keepdims=True)) + 1e-6)
    harm = pyramidal_mse_with_tokens(sa_p, hm_p, tokens)
    cce = tf.reduce_mean(Cross_entropy(labels, y_pred))
    wl = tf.add_n([tf.nn.l2_loss(v) for v in model.trainable_variables if "bn/" not in v.name
                   and "normalization" not in v.name and "embed" not in v.name and "Norm" not in v.name
                   and "norm" not in v.name and "class_token" not in v.name])
    value = float(cce + wl * 1e-5 + harm)
    names = [v.name for v in model.trainable_variables]
    np.savez(sys.argv[2], value=value, names=np.array(names), saliency=sa.numpy(),
             **{f"g{i}": g.numpy() for i, g in enumerate(grads)})
    """
)


def _environment() -> Path:
    python = ENV / "bin" / "python"
    if python.exists():
        return python
    steps = [
        [sys.executable, "-m", "venv", str(ENV)],
        [str(python), "-m", "pip", "install", "-q", "tensorflow-cpu", "tf-keras"],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "harmonization==0.0.9"],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            pytest.skip(f"cannot create the TensorFlow environment ({' '.join(cmd[2:5])}): "
                        f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return python


class TorchTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1_bn = nn.BatchNorm2d(4, eps=1e-5)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.tanh(self.conv1_bn(self.conv1(x)))
        return self.fc(torch.tanh(self.conv2(x)).mean(dim=(2, 3)))


def test_loss_and_gradient_match_the_authors_tensorflow_code(tmp_path):
    python = _environment()
    torch.manual_seed(0)
    net = TorchTwin().train()
    with torch.no_grad():
        net.conv1_bn.weight.uniform_(0.5, 1.5)
        net.conv1_bn.bias.uniform_(-0.2, 0.2)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    maps = rng.random((4, 32, 32)).astype(np.float32)
    tokens = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    p = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    np.savez(
        tmp_path / "in.npz", images=images.transpose(0, 2, 3, 1), labels=np.eye(3, dtype=np.float32)[y],
        maps=maps, tokens=tokens,
        conv1_w=p["conv1.weight"].transpose(2, 3, 1, 0), conv1_b=p["conv1.bias"],
        bn_g=p["conv1_bn.weight"], bn_b=p["conv1_bn.bias"],
        conv2_w=p["conv2.weight"].transpose(2, 3, 1, 0), conv2_b=p["conv2.bias"],
        fc_w=p["fc.weight"].T, fc_b=p["fc.bias"],
    )
    (tmp_path / "run.py").write_text(SCRIPT)
    done = subprocess.run([str(python), str(tmp_path / "run.py"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    tf_out = np.load(tmp_path / "out.npz")

    loss, parts = harmonization_loss(net, torch.from_numpy(images), torch.from_numpy(y), torch.from_numpy(maps),
                                     torch.from_numpy(tokens), return_parts=True)
    net.zero_grad()
    loss.backward()
    assert parts["map_term"] > 1e-3  # the map term weighs in the comparison
    assert abs(float(loss.detach()) - float(tf_out["value"])) <= 1e-5 * max(1.0, abs(float(tf_out["value"])))
    np.testing.assert_allclose(parts["saliency"].numpy(), tf_out["saliency"], rtol=1e-4, atol=1e-7)
    # Keras' order: conv1 kernel/bias, bn gamma/beta, conv2 kernel/bias, fc kernel/bias.
    ours = [net.conv1.weight.grad.numpy().transpose(2, 3, 1, 0), net.conv1.bias.grad.numpy(),
            net.conv1_bn.weight.grad.numpy(), net.conv1_bn.bias.grad.numpy(),
            net.conv2.weight.grad.numpy().transpose(2, 3, 1, 0), net.conv2.bias.grad.numpy(),
            net.fc.weight.grad.numpy().T, net.fc.bias.grad.numpy()]
    names = [str(n) for n in tf_out["names"]]
    report = {}
    for i, (g, name) in enumerate(zip(ours, names)):
        ref = tf_out[f"g{i}"]
        report[name] = float(np.abs(g - ref).max() / max(1.0, np.abs(ref).max()))
    report["value"] = abs(float(loss.detach()) - float(tf_out["value"]))
    print("torch vs TensorFlow, max |difference| / max(1, max |reference|):", json.dumps(report))
    assert max(report.values()) < 1e-5, json.dumps(report)
