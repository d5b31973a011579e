"""Float64 references for tests that compare float computations which round differently.

Two float32 computations of one function (channels-last and contiguous convolutions, autocast
and float32, another summation order) differ by rounding, by an amount that depends on the
kernels the CPU runs (oneDNN's and ATen's instruction set, the thread count): a bound tuned to
the difference one machine shows fails on another. Instead (``assert_within_reference``):

1. compute the same function in float64 (``to_float64``: the same weights and inputs, cast);
2. measure each float32 result's error against it (the largest absolute difference);
3. require the variant's error to be at most ``FACTOR`` x the error of the computation it claims
   to reproduce, or at most a floor: ``FLOOR_ULPS`` float32 roundings of the result's scale, or
   a bound derived from the computation's size (``summation_bound``; for single numbers such as
   losses, whose one error sample may by chance be far below its usual size).

Computations that differ only in summation order have errors of one size, so the ratio stays
near 1 on any machine (here at most 1.91 over every tensor and CPU setting); a real defect (a
wrong weight, layout or index) is orders of magnitude above rounding.

Discrete steps are not continuous: top-k, NMS, IoU thresholds and random sampling can decide
differently on a rounding, in float64 as in another kernel, and so can the gradients of ReLU and
max pooling. ``DecisionReplay`` records the decisions of one run (the return values of the
methods that make them, and with ``activations`` the ReLU masks and max-pool indices) and
replays them in the others, so that what is compared is one continuous computation; decisions
that depend on no rounding are recomputed and asserted equal (``verify``).

Use in a test (a Detectron2 R-CNN; ``inference_outputs`` does this at inference)::

    replay = DecisionReplay(TRAINING_DECISIONS, activations=True)
    model64 = to_float64(model)
    with replay.record(model): losses = model(inputs)
    with replay.replay(variant, torch.float32): variant_losses = variant(inputs)
    with replay.replay(model64, torch.float64): losses64 = model64(inputs)
    assert_within_reference("loss", variant_losses[k], losses[k], losses64[k], floor=...)

Two float64 computations (PQ by two implementations) are compared within ``pq_tolerance``.
``pytest --float-report`` prints every check at the end (scale, both float64 errors, their
ratio, the bound and the variant's direct difference from the reference), e.g.
``pytest -m numerics --float-report``.
"""

import contextlib
import copy
import dataclasses
import functools
import operator
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch.overrides import TorchFunctionMode

# The variant's error may be this many times the reference computation's own error.
FACTOR = 4.0
# Errors below this many float32 roundings of the result's largest magnitude count as equal.
FLOOR_ULPS = 8

EPS = {
    dtype: torch.finfo(dtype).eps
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16)
}
# The most per-segment IoUs a PQ sum of the tests adds up (see ``pq_tolerance``).
PQ_SEGMENTS = 10**4


@dataclasses.dataclass
class Measurement:
    """One check: errors against float64 of the reference and the variant computation."""

    test: str
    quantity: str
    scale: float  # largest magnitude of the float64 result
    reference_error: float  # largest |reference - float64|
    variant_error: float  # largest |variant - float64|
    bound: float
    difference: float = float("nan")  # largest |variant - reference| (what float32 alone shows)

    @property
    def ratio(self) -> float:
        return self.variant_error / self.reference_error if self.reference_error else float("inf")


MEASUREMENTS: List[Measurement] = []
_current_test = ["(outside a test)"]


def set_current_test(name: str) -> None:
    """Name the test whose measurements follow (conftest calls it before each test)."""
    _current_test[0] = name


def to_float64(value: Any) -> Any:
    """``value`` with every floating-point tensor cast to float64: tensors, ``Boxes``,
    ``Instances``, modules (a deep copy), and lists, tuples and dicts of these."""
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).double()
    return cast_floats(value, torch.float64)


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor cast to ``dtype`` (see ``to_float64``); other
    values (integer and bool tensors, ``BitMasks``, numbers) are returned as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Boxes):
        return Boxes(cast_floats(value.tensor, dtype))
    if isinstance(value, Instances):
        fields = {k: cast_floats(v, dtype) for k, v in value.get_fields().items()}
        return Instances(value.image_size, **fields)
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def largest_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """max |value - exact|, computed in float64 (0.0 for empty tensors)."""
    assert value.shape == exact.shape, (value.shape, exact.shape)
    if value.numel() == 0:
        return 0.0
    return float((value.detach().double() - exact.detach().double()).abs().max())


def assert_within_reference(
    quantity: str,
    variant: torch.Tensor,
    reference: torch.Tensor,
    exact: torch.Tensor,
    factor: float = FACTOR,
    floor: Optional[float] = None,
    floor_ulps: float = FLOOR_ULPS,
) -> Measurement:
    """Assert ``|variant - exact| <= max(factor * |reference - exact|, floor)`` (largest absolute
    differences), where ``exact`` is the float64 computation and ``reference`` the float32
    computation that ``variant`` claims to reproduce.

    ``floor`` defaults to ``floor_ulps`` float32 roundings of ``exact``'s largest magnitude. For
    a scalar (a loss), a single error sample may by chance be far below its typical size, so pass
    a floor derived from the computation (e.g. ``summation_bound``) and say how in the test.
    Returns the measurement (also recorded for ``--float-report``).
    """
    scale = float(exact.detach().double().abs().max()) if exact.numel() else 0.0
    if floor is None:
        floor = floor_ulps * EPS[torch.float32] * scale
    reference_error = largest_error(reference, exact)
    variant_error = largest_error(variant, exact)
    bound = max(factor * reference_error, floor)
    difference = largest_error(variant, reference)
    measurement = Measurement(
        _current_test[0], quantity, scale, reference_error, variant_error, bound, difference
    )
    MEASUREMENTS.append(measurement)
    assert variant_error <= bound, (
        f"{quantity} differs from float64 by {variant_error:.3g}, more than "
        f"max({factor:g} x the reference computation's {reference_error:.3g}, floor "
        f"{floor:.3g}) (scale {scale:.3g})"
    )
    return measurement


def summation_bound(terms, magnitude, dtype: torch.dtype = torch.float32):
    """A bound on the rounding error of a sum of ``terms`` values of total absolute size
    ``magnitude`` computed in ``dtype`` in any order: ``(terms - 1) * eps * magnitude``, twice
    the first-order worst case of recursive summation ((n - 1) u sum|x|, u = eps / 2: Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2; blocked and pairwise
    orders have smaller ones); the factor 2 covers the few roundings outside the sum (a mean's
    division). For a mean of non-negative terms, ``magnitude`` is the mean itself. ``terms`` and
    ``magnitude`` may be numpy arrays (elementwise bounds)."""
    return np.maximum(np.asarray(terms) - 1, 1) * EPS[dtype] * np.asarray(magnitude)


def within(quantity: str, difference: float, bound: float) -> bool:
    """``difference <= bound``, the largest ``difference`` of each quantity of a test recorded
    for ``--float-report`` (for checks of two float64 computations, e.g. ``pq_tolerance``)."""
    for m in MEASUREMENTS:
        if (m.test, m.quantity) == (_current_test[0], quantity):
            m.variant_error, m.bound = max(m.variant_error, difference), max(m.bound, bound)
            break
    else:
        nan = float("nan")
        MEASUREMENTS.append(
            Measurement(_current_test[0], quantity, nan, nan, difference, bound, difference)
        )
    return difference <= bound


def pq_tolerance(scale: float = 1.0) -> float:
    """How far two float64 computations of one PQ, SQ or RQ may differ: each sums at most
    ``PQ_SEGMENTS`` IoUs (each in [0, 1], over a count at least their number) in its own order,
    so they differ by at most ``summation_bound(PQ_SEGMENTS, scale, float64)`` (2.2e-12 of the
    value range ``scale``: 1 for fractions, 100 for percent)."""
    return summation_bound(PQ_SEGMENTS, scale, torch.float64)


def report_lines() -> List[str]:
    """The recorded measurements as a table, grouped by test (``--float-report``)."""
    lines, test = [], None
    for m in MEASUREMENTS:
        if m.test != test:
            test = m.test
            lines.append(test)
            lines.append(
                f"  {'quantity':<62} {'scale':>9} {'ref err':>9} {'var err':>9} {'ratio':>6} "
                f"{'bound':>9} {'var-ref':>9}"
            )
        lines.append(
            f"  {m.quantity[-62:]:<62} {m.scale:9.3g} {m.reference_error:9.3g} "
            f"{m.variant_error:9.3g} {m.ratio:6.2f} {m.bound:9.3g} {m.difference:9.3g}"
        )
    return lines


def _resolve(model: torch.nn.Module, path: str):
    """(owner, method name) of a dotted path such as "roi_heads.label_and_sample_proposals"."""
    owner_path, _, name = path.rpartition(".")
    owner = functools.reduce(getattr, owner_path.split("."), model) if owner_path else model
    return owner, name


def assert_same(a: Any, b: Any, where: str) -> None:
    """Assert two decisions (tensors, Boxes, Instances, sequences of them) are identical."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, Boxes):
        assert_same(a.tensor, b.tensor, where)
    elif isinstance(a, Instances):
        assert a.image_size == b.image_size and a.get_fields().keys() == b.get_fields().keys()
        for key in a.get_fields():
            assert_same(a.get(key), b.get(key), f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif hasattr(a, "tensor"):  # BitMasks, PolygonMasks are compared by their tensor
        assert_same(a.tensor, b.tensor, where)
    else:
        assert a == b, where


# The methods of a Detectron2 R-CNN (GeneralizedRCNN, PanopticFPN) that make its discrete
# decisions. In training: the RPN's anchor labels and sampled anchors (IoU matching, random
# sampling), its proposals (top-k, NMS; replayed also because torchvision's NMS takes no float64
# scores) and the RoI heads' sampled proposals (IoU matching, random sampling). At inference:
# the RPN's proposals and the box head's detections (score threshold, NMS, top-k).
TRAINING_DECISIONS = (
    "proposal_generator.label_and_sample_anchors",
    "proposal_generator.predict_proposals",
    "roi_heads.label_and_sample_proposals",
)
INFERENCE_DECISIONS = ("proposal_generator.predict_proposals", "roi_heads.box_predictor.inference")


class DecisionReplay:
    """The discrete decisions of one run, replayed in other runs of the same model.

    ``with replay.record(model): model(inputs)`` stores what each method of ``methods`` returned,
    call by call; ``with replay.replay(other, torch.float64): other(inputs)`` makes those methods
    of ``other`` return the stored values, floats cast to the given dtype, in the same order.
    Methods listed in ``verify`` still run in the replay, and their result must equal the stored
    one (for decisions that do not depend on rounding).

    With ``activations``, the decisions inside the network are replayed too (``Activations``):
    which inputs of each ReLU pass and which element each max-pooling window takes. Their values
    are continuous, but their gradients jump where a rounding moves an input across zero or
    changes a window's largest element; with them replayed, gradients are continuous as well.
    """

    def __init__(self, methods: Sequence[str], activations: bool = False):
        self.methods = tuple(methods)
        self.calls: Dict[str, List[Any]] = {}
        self.activations = Activations() if activations else None

    @contextlib.contextmanager
    def record(self, model: torch.nn.Module) -> Iterator[None]:
        self.calls = {path: [] for path in self.methods}

        def recorder(path, original):
            def method(*args, **kwargs):
                result = original(*args, **kwargs)
                self.calls[path].append(result)
                return result

            return method

        with self._patched(model, recorder), self._network("record"):
            yield

    @contextlib.contextmanager
    def replay(
        self, model: torch.nn.Module, dtype: torch.dtype, verify: Iterable[str] = ()
    ) -> Iterator[None]:
        verify = set(verify)
        assert verify <= set(self.methods), verify
        remaining = {path: list(calls) for path, calls in self.calls.items()}

        def replayer(path, original):
            def method(*args, **kwargs):
                assert remaining[path], f"{path}: called more often than in the recorded run"
                recorded = remaining[path].pop(0)
                if path in verify:
                    assert_same(original(*args, **kwargs), recorded, path)
                return cast_floats(recorded, dtype)

            return method

        with self._patched(model, replayer), self._network("replay"):
            yield
        left = {path: len(calls) for path, calls in remaining.items() if calls}
        assert not left, f"recorded decisions not used: {left}"

    def _network(self, mode: str) -> contextlib.AbstractContextManager:
        if self.activations is None:
            return contextlib.nullcontext()
        return self.activations.start(mode)

    @contextlib.contextmanager
    def _patched(self, model: torch.nn.Module, wrap) -> Iterator[None]:
        owners = [_resolve(model, path) for path in self.methods]
        for path, (owner, name) in zip(self.methods, owners):
            setattr(owner, name, wrap(path, getattr(owner, name)))
        try:
            yield
        finally:
            for owner, name in owners:
                delattr(owner, name)  # the instance attribute: the class's method again


_RELU = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)
_IN_PLACE_RELU = (torch.relu_, torch.Tensor.relu_)


class Activations(TorchFunctionMode):
    """Records (mode "record") or replays (mode "replay") the decisions of ReLUs (which inputs
    pass: a bool mask) and 2-D max pooling (the index of each window's largest element), call by
    call in the order the network makes them. Replayed, a ReLU keeps the recorded inputs
    (``masked_fill`` of the others: the output may be a rounding below zero where the recorded
    run's input was above) and a max pooling takes the recorded elements; the gradient then
    flows exactly where it flowed in the recorded run."""

    def __init__(self):
        super().__init__()
        self.decisions: List[torch.Tensor] = []
        self.mode = "record"
        self._next = 0

    @contextlib.contextmanager
    def start(self, mode: str) -> Iterator[None]:
        self.mode, self._next = mode, 0
        if mode == "record":
            self.decisions = []
        with self:
            yield
        if mode == "replay":
            assert self._next == len(self.decisions), "fewer activations than recorded"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU:
            in_place = func in _IN_PLACE_RELU or kwargs.get("inplace") or args[1:2] == (True,)
            return self._relu(args[0], bool(in_place), func, args, kwargs)
        if func is F.max_pool2d:
            return self._max_pool2d(args, kwargs)
        return func(*args, **kwargs)

    def _take(self, like: torch.Tensor) -> torch.Tensor:
        assert self._next < len(self.decisions), "more activations than recorded"
        decision = self.decisions[self._next]
        self._next += 1
        assert decision.shape == like.shape, (decision.shape, like.shape)
        return decision

    def _relu(self, x, in_place, func, args, kwargs):
        if self.mode == "record":
            out = func(*args, **kwargs)
            self.decisions.append(out > 0)
            return out
        dropped = ~self._take(x)
        return x.masked_fill_(dropped, 0) if in_place else x.masked_fill(dropped, 0)

    def _max_pool2d(self, args, kwargs):
        x = args[0]
        kwargs = dict(kwargs, return_indices=True)
        if self.mode == "record":
            out, indices = F.max_pool2d(*args, **kwargs)
            self.decisions.append(indices)
            return out
        shape = F.max_pool2d(x.detach(), *args[1:], **kwargs)[1].shape
        indices = self._take(torch.empty(shape))
        out = x.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)  # keep the layout
        return out


@contextlib.contextmanager
def module_outputs(model: torch.nn.Module, names: Sequence[str]) -> Iterator[Dict[str, list]]:
    """Collect the outputs of submodules ``names`` (dotted paths) of ``model`` while inside:
    {name: [output of each call]}."""
    outputs: Dict[str, list] = {name: [] for name in names}
    handles = [
        operator.attrgetter(name)(model).register_forward_hook(
            lambda module, args, out, name=name: outputs[name].append(out)
        )
        for name in names
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def inference_outputs(models: Sequence[torch.nn.Module], inputs: List[Dict]) -> List[Dict]:
    """The continuous outputs of Detectron2 R-CNN models (GeneralizedRCNN, PanopticFPN and their
    subclasses) at inference, every model making the first one's discrete decisions (proposals,
    detections; ``INFERENCE_DECISIONS``), floats in the model's own dtype: per model {"semantic
    logits" (B, C, H, W) (panoptic models), "box class logits" (R, K + 1), "box deltas" (R, 4K),
    "mask probabilities" (D, 1, M, M)}."""
    replay = DecisionReplay(INFERENCE_DECISIONS)
    results = []
    for index, model in enumerate(models):
        dtype = next(model.parameters()).dtype
        decisions = replay.replay(model, dtype) if index else replay.record(model)
        hooks = module_outputs(model, ["roi_heads.box_predictor"])
        with decisions, hooks as hooked, torch.no_grad():
            outputs = model.inference(inputs, do_postprocess=False)
        instances, sem_seg = outputs if isinstance(outputs, tuple) else (outputs, None)
        ((class_logits, deltas),) = hooked["roi_heads.box_predictor"]
        result = {} if sem_seg is None else {"semantic logits": sem_seg}
        result["box class logits"], result["box deltas"] = class_logits, deltas
        result["mask probabilities"] = torch.cat([x.pred_masks for x in instances])
        results.append(result)
    return results
