"""The "graph" artifact: an exported program as the Python code ``torch.fx`` generates for its
graphs, plus its tensors, in one ``torch.save`` file.

``torch.export.load`` rebuilds every node's symbolic shapes with sympy: for the R18 quick-start
program that is ~15-20 s on a 2-core CPU, longer than predicting a hundred images. The runner
needs none of that to run the program: it execs the code of each graph (the main one and the
bodies of its loops) and sets the tensors as buffers, in well under a second
(``run_panoptic.load_graph_program``; BENCHMARKS.md "Predicting a folder"). The file holds only
strings, dicts and tensors, so ``torch.load(..., weights_only=True)`` reads it; the code it holds
is then executed, so, like any model file, load only artifacts you trust.
"""

import json
import re
from typing import Any, Dict, Tuple

import torch
from torch import fx

from ..file_io import atomic_write
from . import run_panoptic

__all__ = ["GRAPH_FORMAT", "save_graph_program", "check_graph_program"]

GRAPH_FORMAT = run_panoptic.GRAPH_FORMAT
# The names the generated code may use: those the runner provides.
ALLOWED_GLOBALS = tuple(run_panoptic.GRAPH_GLOBALS)


def _flat_code(module: fx.GraphModule, name: str) -> str:
    """The code of ``module``'s graph as ``forward(self, *inputs)`` returning its outputs as
    they are (no pytree flattening), without the input-guard call of an unlifted program (the
    runner checks sizes itself)."""
    graph = fx.Graph()
    values: Dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(module.graph, values))
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
    code = graph.python_code(root_module="self")
    # the code generator lists some names whether the code uses them or not
    used = {name for name in code.globals if re.search(rf"\b{name}\b", code.src)}
    unknown = sorted(used - set(ALLOWED_GLOBALS))
    if unknown:
        raise ValueError(
            f"Graph {name or 'forward'} of the program refers to {unknown}, which the graph "
            "format does not provide; use the pt2 format"
        )
    return code.src


def _collect(
    module: fx.GraphModule,
    sources: Dict[str, str],
    tensors: Dict[str, torch.Tensor],
    prefix: str = "",
) -> None:
    """The code of ``module`` and of the graphs it calls (loop bodies), and the tensors they
    read, by dotted attribute path from the program."""
    sources[prefix] = _flat_code(module, prefix)
    for node in module.graph.nodes:
        if node.op != "get_attr":
            continue
        path = f"{prefix}.{node.target}" if prefix else node.target
        value = _attribute(module, node.target)
        if isinstance(value, fx.GraphModule):
            _collect(value, sources, tensors, path)
        else:
            tensors[path] = value.detach()


def _attribute(module: torch.nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


def save_graph_program(
    program: torch.export.ExportedProgram, metadata: Dict[str, Any], path: str
) -> None:
    """Save ``program`` in the graph format (atomically), with its metadata.

    Raises:
        ValueError: the generated code needs a name the runner does not provide.
    """
    sources: Dict[str, str] = {}
    tensors: Dict[str, torch.Tensor] = {}
    _collect(program.module(), sources, tensors)
    data = {
        "format": GRAPH_FORMAT,
        "metadata": json.dumps(metadata),
        "sources": sources,
        "tensors": tensors,
    }
    atomic_write(path, lambda f: torch.save(data, f))


def check_graph_program(
    path: str, program: torch.export.ExportedProgram, inputs: Tuple[torch.Tensor, ...]
) -> None:
    """Load the graph program at ``path`` as the runner does and check that its outputs on
    ``inputs`` equal ``program``'s (NaN scores included).

    Raises:
        ValueError: they differ.
    """
    device = str(inputs[0].device)
    loaded, _ = run_panoptic.load_graph_program(path, device)
    with torch.no_grad():
        expected, actual = program.module()(*inputs), loaded(*inputs)
    if not all(map(_same, expected, actual)):
        raise ValueError(f"{path}: the graph program's outputs differ from the exported program's")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaN equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())
