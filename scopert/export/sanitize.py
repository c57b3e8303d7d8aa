"""Clean an exported graph as ``polygraphy surgeon sanitize --fold-constants`` does, through its library calls.

Folds constants (ONNX Runtime evaluates constant subgraphs, shape arithmetic included), removes nodes and
initializers no output depends on (each unused initializer is a warning every time ONNX Runtime loads the
file) and infers shapes. The ScopeRT card in ``metadata_props``, the opset and the graph's input and output
names are kept; the result must pass ``onnx.checker``. A graph Polygraphy cannot sanitize is an InputError
and nothing is written. Imports onnx, onnxruntime, polygraphy and onnx-graphsurgeon (the ``export`` extra); never torch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from scopert.errors import InputError

log = logging.getLogger(__name__)

SANITIZE_CMD = "polygraphy surgeon sanitize MODEL.onnx --fold-constants -o MODEL.onnx"


@dataclass(frozen=True)
class SanitizeReport:
    """Node and initializer counts before and after, and the tool that did it."""

    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    tool: str

    @property
    def nodes_removed(self) -> int:
        return self.nodes_before - self.nodes_after

    @property
    def initializers_removed(self) -> int:
        return self.initializers_before - self.initializers_after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nodes_removed": self.nodes_removed,
                "initializers_removed": self.initializers_removed}


def graph_counts(model: Any) -> tuple[int, int]:
    """(nodes, initializers) of the main graph; Constant nodes count as initializers, as ONNX Runtime sees them."""
    constants = sum(1 for n in model.graph.node if n.op_type == "Constant")
    return len(model.graph.node) - constants, len(model.graph.initializer) + constants


MAX_FOLD_PASSES = 5


def _import_graphsurgeon() -> Any:
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise InputError("sanitizing the exported graph needs onnx-graphsurgeon and Polygraphy; install the export "
                         "extra: `pip install 'scopert[export]'`.") from None
    return gs


def sanitize_model(model: Any, where: str = "the model") -> tuple[Any, SanitizeReport]:
    """A sanitized copy of ``model`` (an onnx ModelProto) and its report; ``model`` itself is not changed.

    The passes of ``polygraphy surgeon sanitize --fold-constants`` (graphsurgeon's ``fold_constants`` with shape
    folding, ``cleanup``, repeated until the node count is stable, then shape inference), called with
    ``error_ok=False``: Polygraphy's own loader only warns when ONNX Runtime cannot evaluate a constant
    subgraph, and a half-folded graph must not be written."""
    import onnx
    import onnxruntime as ort

    gs = _import_graphsurgeon()
    src = onnx.ModelProto()
    src.CopyFrom(model)
    nodes_before, inits_before = graph_counts(src)
    inputs = [i.name for i in src.graph.input if i.name not in {t.name for t in src.graph.initializer}]
    outputs = [o.name for o in src.graph.output]
    gs_severity = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL  # graphsurgeon's notes are not ours to print
    ort.set_default_logger_severity(3)  # ORT's optimizer notes on the graph being folded, not on the result
    try:
        clean, count = src, len(src.graph.node)
        for _ in range(MAX_FOLD_PASSES):
            graph = gs.import_onnx(clean)
            graph.fold_constants(fold_shapes=True, partitioning=None, error_ok=False)
            clean = gs.export_onnx(graph.cleanup(remove_unused_graph_inputs=False), do_type_check=True)
            # shapes known now let the next pass fold more shape arithmetic (as Polygraphy's loader does)
            clean = onnx.shape_inference.infer_shapes(clean, data_prop=True)
            if len(clean.graph.node) == count:
                break
            count = len(clean.graph.node)
        del clean.graph.value_info[:]
        clean = onnx.shape_inference.infer_shapes(clean, strict_mode=True, data_prop=True)
    except Exception as exc:  # ORT cannot evaluate a constant subgraph, an op graphsurgeon cannot export, ...
        raise InputError(f"Polygraphy/graphsurgeon cannot sanitize {where} ({type(exc).__name__}: "
                         f"{_first_line(exc)}). The graph has a constant subgraph ONNX Runtime cannot evaluate or "
                         "an op it does not know; fix the family's export_module or export with another "
                         "opset.") from None
    finally:
        gs.logger.G_LOGGER.severity = gs_severity
        ort.set_default_logger_severity(2)  # ORT's default
    _keep_model_fields(src, clean)
    new_inputs = [i.name for i in clean.graph.input if i.name not in {t.name for t in clean.graph.initializer}]
    if new_inputs != inputs or [o.name for o in clean.graph.output] != outputs:
        raise InputError(f"sanitizing {where} changed its inputs/outputs ({inputs} -> {new_inputs}, {outputs} -> "
                         f"{[o.name for o in clean.graph.output]}); an output that is a constant cannot be run "
                         "by ScopeRT. Fix the family's export_module.")
    try:
        onnx.checker.check_model(clean)
    except Exception as exc:
        raise InputError(f"{where} is not a valid graph after sanitizing (onnx.checker: {_first_line(exc)}); the "
                         "source graph is malformed. Re-export it with `scopert export` (another opset if it "
                         "recurs).") from None
    nodes_after, inits_after = graph_counts(clean)
    report = SanitizeReport(nodes_before, nodes_after, inits_before, inits_after, _tool_versions())
    log.info("sanitized %s: nodes %d -> %d, initializers %d -> %d (%s)", where, nodes_before, nodes_after,
             inits_before, inits_after, report.tool)
    return clean, report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _keep_model_fields(src: Any, clean: Any) -> None:
    """Model-level fields graphsurgeon's export does not carry: the card, producer, doc string, IR version."""
    del clean.metadata_props[:]
    clean.metadata_props.extend(src.metadata_props)
    clean.producer_name, clean.producer_version = src.producer_name, src.producer_version
    clean.doc_string = src.doc_string
    clean.ir_version = src.ir_version
    clean.graph.name = src.graph.name


def _tool_versions() -> str:
    import onnx_graphsurgeon

    return f"onnx-graphsurgeon {onnx_graphsurgeon.__version__}: fold_constants(fold_shapes) + cleanup, " \
           "onnx infer_shapes (= polygraphy surgeon sanitize --fold-constants)"
