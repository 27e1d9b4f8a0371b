"""Import of ImageNet-pretrained ResNet weights (torchvision layout) into :class:`bodyjax.resnet.ResNet`,
and the project's own weights files (:func:`save_weights`, :func:`read_weights`: the shipped part
predictor and regressor, whose loaders check the stored network fields and every shape).

The user provides the file (no download happens here): a ``.safetensors`` or ``.npz`` file holding
the state dict of a torchvision ResNet with its usual names, e.g. for ResNet50::

    conv1.weight  (64, 3, 7, 7)          bn1.{weight, bias, running_mean, running_var}
    layer1.0.conv1.weight (64, 64, 1, 1) layer1.0.bn1.*   ...   layer1.0.conv3.weight  layer1.0.bn3.*
    layer1.0.downsample.0.weight (256, 64, 1, 1)   layer1.0.downsample.1.*
    ...                                  layer4.2.bn3.*
    fc.weight, fc.bias                   (ignored: the regressor has its own head)

(``num_batches_tracked`` entries are ignored too; a leading ``module.`` is stripped). Mapping:

=======================================  ==============================================
torchvision                              Flax (:class:`~bodyjax.resnet.ResNet` variables)
=======================================  ==============================================
``conv1.weight`` (O, I, kH, kW)          ``params/conv1/kernel`` (kH, kW, I, O)  (OIHW → HWIO)
``bn1.weight`` / ``bn1.bias``            ``params/bn1/scale`` / ``params/bn1/bias``
``bn1.running_mean`` / ``running_var``   ``batch_stats/bn1/mean`` / ``batch_stats/bn1/var``
``layer{s}.{b}.conv{i}.*``, ``bn{i}.*``  ``layer{s}_{b}/conv{i}``, ``layer{s}_{b}/bn{i}``
``layer{s}.{b}.downsample.0`` / ``.1``   ``layer{s}_{b}/downsample_conv`` / ``downsample_bn``
=======================================  ==============================================

Both networks use the same padding, strides (stride on the 3×3 convolution of the bottleneck),
BatchNorm ε = 1e-5 and the ImageNet input normalisation of :func:`bodyjax.regressor.preprocess`, so
an imported network computes the same features as the original (tested against torch).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple, Union

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


class ImportReport(NamedTuple):
    """What :func:`import_resnet` did.

    Attributes:
      filled: number of Flax arrays written.
      ignored: state-dict names deliberately skipped (``fc.*``, ``num_batches_tracked``).
    """

    filled: int
    ignored: tuple


def load_state_dict(path: Union[str, os.PathLike]) -> dict:
    """Reads a state dict ``{name: np.ndarray}`` from a ``.safetensors`` or ``.npz`` file."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"unsupported weight file {path!r}: expected .safetensors or .npz")


def flax_path(name: str):
    """``(collection, path tuple, is_conv)`` of a torchvision ResNet name, or ``None`` if ignored.

    Raises ``KeyError`` for names that are neither mapped nor ignored.
    """
    if name.startswith("module."):
        name = name[len("module."):]
    parts = name.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
        return None
    module, field = (), parts[-1]
    head = ".".join(parts[:-1])
    m = _LAYER.match(name)
    if m:
        block = f"layer{m.group(1)}_{m.group(2)}"
        sub = m.group(3).rsplit(".", 1)[0]
        sub = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(sub, sub)
        module = (block, sub)
    elif head in ("conv1", "bn1"):
        module = (head,)
    else:
        raise KeyError(f"unknown ResNet weight name {name!r}")
    leaf = module[-1]
    if leaf.startswith("conv") or leaf == "downsample_conv":
        if field != "weight":
            raise KeyError(f"unexpected convolution field {name!r} (the ResNet convolutions have no bias)")
        return "params", module + ("kernel",), True
    if leaf.startswith("bn") or leaf == "downsample_bn":
        if field not in _BN_FIELDS:
            raise KeyError(f"unexpected BatchNorm field {name!r}")
        collection, flax_field = _BN_FIELDS[field]
        return collection, module + (flax_field,), False
    raise KeyError(f"unknown ResNet weight name {name!r}")


def convert(state_dict: Mapping[str, np.ndarray]) -> tuple[dict, tuple]:
    """Torch state dict → ``({(collection, *path): float32 array}, ignored names)`` (kernels HWIO)."""
    out, ignored = {}, []
    for name, value in state_dict.items():
        target = flax_path(name)
        if target is None:
            ignored.append(name)
            continue
        collection, path, is_conv = target
        value = np.asarray(value, np.float32)
        if is_conv:
            if value.ndim != 4:
                raise ValueError(f"{name}: a convolution weight must be 4-D (O, I, kH, kW), got {value.shape}")
            value = np.transpose(value, (2, 3, 1, 0))
        out[(collection,) + path] = value
    return out, tuple(sorted(ignored))


def import_resnet(variables: Mapping[str, Any], source: Union[str, os.PathLike, Mapping[str, np.ndarray]],
                  prefix: tuple = (), strict: bool = True) -> tuple[dict, ImportReport]:
    """Fills a ResNet's variables from a torchvision state dict.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of a model containing the ResNet (arrays or
        ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``; only their structure and shapes are used
        under ``prefix``).
      source: a path (``.safetensors`` / ``.npz``) or a ``{name: array}`` mapping.
      prefix: path of the ResNet inside ``params`` / ``batch_stats`` (``('backbone',)`` for
        :class:`bodyjax.regressor.Regressor`).
      strict: every ResNet array must be filled (raises ``ValueError`` listing the missing ones);
        with ``strict=False`` missing arrays keep their values from ``variables``.

    Returns:
      ``(variables, report)``: new ``{'params', 'batch_stats'}`` (jnp float32) with the ResNet arrays
      replaced (everything outside ``prefix`` unchanged), and an :class:`ImportReport`.

    Raises:
      ValueError: unknown names, names with no counterpart in ``variables``, shape mismatches
        (reported with both shapes), or missing arrays when ``strict``.
    """
    state_dict = load_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    converted, ignored = convert(state_dict)
    new = {}
    expected = set()
    for collection in ("params", "batch_stats"):
        flat = flax.traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for path, leaf in flat.items():
            if tuple(path[:len(prefix)]) == tuple(prefix):
                expected.add((collection,) + tuple(path[len(prefix):]))
        new[collection] = flat
    unknown = sorted("/".join(k) for k in converted if k not in expected)
    if unknown:
        raise ValueError(f"weights with no counterpart in the model under {prefix}: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''} (wrong depth?)")
    missing = sorted("/".join(k) for k in expected if k not in converted)
    if missing and strict:
        raise ValueError(f"{len(missing)} model arrays not in the weight file: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    filled = 0
    for key, value in converted.items():
        collection, path = key[0], tuple(prefix) + key[1:]
        want = tuple(new[collection][path].shape)
        if value.shape != want:
            raise ValueError(f"{'/'.join(key)}: shape {value.shape} in the file (after OIHW→HWIO), "
                             f"model expects {want} (wrong depth or width?)")
        new[collection][path] = jnp.asarray(value)
        filled += 1
    out = {c: flax.traverse_util.unflatten_dict(flat) for c, flat in new.items()}
    return out, ImportReport(filled=filled, ignored=ignored)


def load_pretrained_backbone(state, source, strict: bool = True):
    """A :class:`bodyjax.regressor.RegressorState` with its backbone replaced by imported weights.

    The head is kept, the optimiser state is re-initialised for the new parameters and the step
    counter is unchanged. Returns ``(state, report)``.
    """
    variables, report = import_resnet({"params": state.params, "batch_stats": state.batch_stats}, source,
                                      prefix=("backbone",), strict=strict)
    params = variables["params"]
    return state.replace(params=params, batch_stats=variables["batch_stats"],
                         opt_state=state.tx.init(params)), report


# ----------------------------------------------------------------------------------------------
# The project's own weights files (the shipped part predictor and regressor)


def save_weights(path: str, variables: Mapping[str, Any], info: dict, dtype=None) -> None:
    """Writes nested ``variables`` (e.g. ``{'params': ..., 'batch_stats': ...}``) as ``.npz``
    entries named by their ``/``-joined paths, with ``info`` (JSON) under ``__info__``.

    Args:
      path: the file.
      variables: nested dicts of arrays.
      info: JSON-able facts stored with them (the network config, how they were made).
      dtype: storage dtype (``None``: as they are; ``np.float16`` halves the file).
    """
    import json  # noqa: PLC0415

    flat = flax.traverse_util.flatten_dict(variables, sep="/")
    np.savez(path, __info__=np.asarray(json.dumps(info, sort_keys=True)),
             **{k: np.asarray(v) if dtype is None else np.asarray(v, dtype) for k, v in flat.items()})


def read_weights(path: str, field: str, what: str):
    """``(arrays, info)`` of a file of :func:`save_weights`.

    Raises:
      FileNotFoundError: naming ``field`` and the file.
      ValueError: naming both when the file cannot be read (``what`` names its content).
    """
    import json  # noqa: PLC0415

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{field}: weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        info = json.loads(str(arrays.pop("__info__")))
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{field}: cannot read the {what} weights {path} ({type(e).__name__}: {e})") from e
    return arrays, info


def check_network(info: dict, config: Any, path: str, field: str, config_path: str) -> None:
    """Raises ``ValueError`` when a network field stored in ``info['network']`` differs from
    ``config``'s, naming the file, the field and ``config_path.<name>``."""
    for name, value in info.get("network", {}).items():
        mine = getattr(config, name)
        if mine != (tuple(value) if isinstance(value, list) and isinstance(mine, tuple) else value):
            raise ValueError(f"{field}: {path} holds a network with {name}={value!r}, the config has "
                             f"{name}={mine!r} ({config_path}.{name})")


def fill_variables(variables: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: str,
                   field: str, prefix: str = "") -> dict:
    """``variables`` (nested) with every leaf replaced by ``arrays[prefix + '/'-joined path]``, cast
    to the leaf's dtype; ``ValueError`` (naming the file) on a missing or mis-shaped entry."""
    new = {}
    for key, value in flax.traverse_util.flatten_dict(variables, sep="/").items():
        stored = arrays.get(prefix + key)
        if stored is None:
            raise ValueError(f"{field}: {path} lacks the variable {prefix + key!r}")
        if stored.shape != tuple(value.shape):
            raise ValueError(f"{field}: {path}: variable {prefix + key!r} has shape {stored.shape}, the "
                             f"network expects {tuple(value.shape)}")
        new[key] = jnp.asarray(stored, value.dtype)
    return flax.traverse_util.unflatten_dict(new, sep="/")
