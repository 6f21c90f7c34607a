"""`tmkt export`: a trained classifier as a NIR graph (Neuromorphic Intermediate Representation).

    tmkt export --checkpoint runs/tmkt-s0/checkpoint.pt --out model.nir

NIR (`nir` on PyPI) is read by snnTorch, Norse, Lava, Sinabs, Rockpool, SpiNNaker2 and others, so a
network trained here runs in those frameworks and on neuromorphic hardware. What is written:

- the backbone's conv - batch norm - neuron units, batch norm folded into the convolution
  (``w * gamma / sqrt(var + eps)``, bias ``beta - mean * gamma / sqrt(var + eps)``), then a NIR LIF
  (or IF) node per neuron layer, 2x2 average pooling as ``AvgPool2d``;
- the classifier: the head's adaptive average pooling to 3x3, the flatten and the linear layer are
  all linear, so they are written as one ``Flatten`` and one ``Affine`` whose weight is the
  classifier's times the pooling matrix (exact for any map size);
- not the MAG and MRP heads: they serve training only (the graph's metadata says so).

Neurons, as spikingjelly defines them, in discrete steps: ``H = V + (X - V) / tau`` (decay_input,
``v_reset = 0``), a spike where ``H >= v_threshold``, then ``V = 0`` (hard reset). NIR's LIF is
continuous, ``tau dv/dt = (v_leak - v) + r I``; its Euler step of length ``dt`` is the same update
when ``tau_NIR = tau * dt``, ``r = 1``, ``v_leak = 0``, ``v_reset = 0``. spikingjelly's IF,
``H = V + X``, is NIR's ``dv/dt = r I`` when ``r = 1 / dt``. The graph's metadata records
``dt`` (1e-4 s, the step snnTorch's NIR import assumes) and the number of time steps. One NIR time
step is one frame of the store's ``[T, 2, H, W]`` input.

What NIR (or this export) cannot express is refused with one line: max pooling (`cnn3`), residual
blocks (`resnet18`), a neuron without hard reset to 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer, neuron
from torch import nn

from tmkt.errors import UserInputError

#: The length of one time step in the graph (seconds): snnTorch's NIR import assumes it.
DT = 1e-4


class ExportError(UserInputError):
    """A model NIR cannot express as exported here (one line for the user)."""


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of ``bn(conv(x))`` as one convolution (``bn`` in eval mode)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale[:, None, None, None]
    bias = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    return weight.numpy().astype(np.float32), bias.numpy().astype(np.float32)


def neuron_node(node: nn.Module, shape: tuple[int, ...], name: str) -> Any:
    """A NIR neuron node for a spikingjelly neuron over feature maps of ``shape``."""
    import nir

    if getattr(node, "v_reset", None) != 0.0:
        raise ExportError(f"{name}: only a hard reset to 0 can be exported (v_reset={node.v_reset})")
    full = {"v_threshold": np.full(shape, float(node.v_threshold), np.float32)}
    full["v_reset"] = np.zeros(shape, np.float32)
    if isinstance(node, neuron.IFNode):
        return nir.IF(r=np.full(shape, 1.0 / DT, np.float32), **full)  # dv/dt = r I: one step adds I
    if isinstance(node, neuron.ParametricLIFNode):
        tau = float(1.0 / torch.sigmoid(node.w.detach()))
    elif isinstance(node, neuron.LIFNode):
        tau = float(node.tau)
    else:
        raise ExportError(f"{name}: neuron {type(node).__name__} has no NIR counterpart here")
    r = 1.0 if node.decay_input else tau  # without decay_input the input is not divided by tau
    return nir.LIF(
        tau=np.full(shape, tau * DT, np.float32),
        r=np.full(shape, r, np.float32),
        v_leak=np.zeros(shape, np.float32),
        **full,
    )


def backbone_nodes(features: nn.Sequential, shape: tuple[int, int, int]) -> tuple[list, tuple[int, int, int]]:
    """``(name, node)`` pairs of the backbone's units in order, and the shape of its output map."""
    import nir

    nodes: list[tuple[str, Any]] = []
    for index, block in enumerate(features):
        if isinstance(block, nn.Sequential) and isinstance(block[0], layer.SeqToANNContainer):
            conv, bn = block[0][0], block[0][1]
            weight, bias = fold_batch_norm(conv, bn)
            stride, padding = conv.stride, conv.padding
            nodes.append(
                (
                    f"conv{index}",
                    nir.Conv2d(shape[1:], weight, stride, padding, conv.dilation, conv.groups, bias),
                )
            )
            out_h = (shape[1] + 2 * padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // stride[
                0
            ] + 1
            out_w = (shape[2] + 2 * padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // stride[
                1
            ] + 1
            shape = (conv.out_channels, out_h, out_w)
            nodes.append((f"lif{index}", neuron_node(block[1], shape, f"features.{index}")))
        elif isinstance(block, layer.SeqToANNContainer) and isinstance(block[0], nn.AvgPool2d):
            size = np.array([2, 2])
            nodes.append((f"pool{index}", nir.AvgPool2d(size, size, np.array([0, 0]))))
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif isinstance(block, layer.SeqToANNContainer) and isinstance(block[0], nn.MaxPool2d):
            raise ExportError("NIR has no max pooling: the cnn3 backbone cannot be exported")
        else:
            raise ExportError(
                f"backbone unit {type(block).__name__} (residual blocks) cannot be exported to NIR"
            )
    return nodes, shape


def head_affine(model: nn.Module, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The classifier applied to the flattened ``[C, H, W]`` spike map: its weight times the matrix of
    the adaptive average pooling that precedes it (all three steps are linear)."""
    channels, height, width = shape
    pooled = model.pool[0].output_size
    basis = torch.eye(height * width).reshape(height * width, 1, height, width)
    pooling = F.adaptive_avg_pool2d(basis, pooled).reshape(height * width, -1).T  # [P, H*W]
    weight = model.classifier.weight.detach().reshape(-1, channels, pooling.shape[0])
    folded = torch.einsum("kcp,pq->kcq", weight, pooling).reshape(weight.shape[0], -1)
    return folded.numpy().astype(np.float32), model.classifier.bias.detach().numpy().astype(np.float32)


def to_nir(model: nn.Module, time_steps: int, size: tuple[int, int]) -> Any:
    """The classifier of a `SpikingClassifier` (in eval mode) as a ``nir.NIRGraph``."""
    import nir

    model = model.eval()
    input_shape = (2, *size)
    nodes, shape = backbone_nodes(model.backbone.features, input_shape)
    weight, bias = head_affine(model, shape)
    nodes.append(("flatten", nir.Flatten({"input": np.array(shape)}, start_dim=0, end_dim=-1)))
    nodes.append(("classifier", nir.Affine(weight, bias)))
    graph_nodes = {"input": nir.Input({"input": np.array(input_shape)})}
    graph_nodes.update(nodes)
    graph_nodes["output"] = nir.Output({"output": np.array([weight.shape[0]])})
    names = list(graph_nodes)
    metadata = {
        "dt": DT,
        "time_steps": time_steps,
        "left_out": "the MAG and MRP heads (training only)",
        "logits": "per time step; the prediction is the class of the mean over time steps",
    }
    return nir.NIRGraph(graph_nodes, list(zip(names, names[1:], strict=False)), metadata=metadata)


def checked_out(out: str | Path) -> Path:
    """``out`` when a file can be written there: a mistyped path is one line before any work."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; name the .nir file to write")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: directory {out.parent} does not exist")
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``checkpoint``'s classifier to ``out`` as NIR; returns what was written.

    The file is written beside ``out`` and renamed into place, so a failed write leaves no partial
    graph under the name a consumer would read."""
    import nir

    from tmkt.evaluate import load_checkpoint

    out = checked_out(out)
    model, meta = load_checkpoint(checkpoint, "cpu")
    graph = to_nir(model, int(meta["T"]), tuple(meta["size"]))
    partial = out.with_name(out.name + ".partial")
    try:
        nir.write(str(partial), graph)
    except OSError as err:
        partial.unlink(missing_ok=True)
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ExportError(f"--out {out}: cannot write: {reason}") from err
    partial.replace(out)
    return {"out": str(out), "nodes": len(graph.nodes), "backbone": meta["model_config"]["backbone"]}


def main(argv: list[str] | None = None) -> int:
    from tmkt.evaluate import OneLineParser

    parser = OneLineParser(prog="tmkt export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt of tmkt train")
    parser.add_argument("--out", required=True, help="the .nir file to write")
    args = parser.parse_args(argv)
    written = export_checkpoint(args.checkpoint, args.out)
    print(
        f"wrote {written['out']}: {written['nodes']} NIR nodes ({written['backbone']} classifier; "
        "MAG and MRP heads left out: training only)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
