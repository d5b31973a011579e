"""The Panoptic FPN meta-architecture, registered as ``PanopticFPNExt``."""

import contextlib
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.panoptic_fpn import PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from ..engine.weights import watch_loaded_weights
from ..registration import register_once
from .combiner import PanopticHeuristicCombiner, build_panoptic_combiner
from .device_settings import autocast_dtype, check_memory_format, resolve_memory_format
from .post_processing import paste_regions, semantic_labels

__all__ = ["PanopticFPNExt"]


@register_once(META_ARCH_REGISTRY)
class PanopticFPNExt(PanopticFPN):
    """Panoptic FPN: ResNet-FPN backbone, RPN, Mask R-CNN RoI heads and the semantic FPN branch.

    Training is Detectron2's ``PanopticFPN``: the loss dict holds the RoI heads' instance losses
    (classification, box, mask) times ``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT`` (lambda_i), the
    RPN losses unweighted, and ``loss_sem_seg`` times
    ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT`` (lambda_s). Module names are the same, so Detectron2's
    model-zoo checkpoints load with no missing or unexpected keys.

    Inference uses the combiner from ``PANOPTIC_COMBINER_REGISTRY``
    (``MODEL.PANOPTIC_FPN_EXT.COMBINER_NAME``) instead of Detectron2's fixed function, and tells
    it where each pasted mask can lie (:func:`paste_regions`), so that it need not scan the
    full-size masks.

    Memory layout (``MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT``): "channels_last" holds the 4-D
    weights and the input batch in channels-last layout, so every convolution runs channels-last;
    "contiguous" keeps Detectron2's NCHW layout (outputs bit-identical to Detectron2's
    ``PanopticFPN``); "auto" (the default) picks per device what was measured faster there
    (:func:`~.device_settings.resolve_memory_format`: channels-last for inference on CPU,
    contiguous in training and on CUDA). The layout follows the model's device and mode:
    ``model.to(device)`` (as ``build_model`` does with ``MODEL.DEVICE``), ``model.train()`` and
    ``model.eval()`` re-resolve it. Weights loaded later keep the layout (``load_state_dict``
    copies into the existing tensors); state_dict keys and shapes do not depend on it.

    Inference precision (``MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST``): "" runs in float32;
    "float16" or "bfloat16" runs the network (backbone to heads) under ``torch.autocast`` on the
    model's device; its raw outputs are cast back to float32 before the postprocessing, so every
    output keeps its float32 / bool / int32 dtype.
    """

    @configurable
    def __init__(
        self,
        *,
        combiner: Optional[Callable] = None,
        memory_format: str = "auto",
        inference_autocast: str = "",
        **kwargs,
    ):
        """
        Args:
            combiner: ``combiner(instances, semantic_labels, mask_boxes=...) -> (panoptic_seg,
                segments_info)``, an entry of ``PANOPTIC_COMBINER_REGISTRY``; None: the
                paper's ``PanopticHeuristicCombiner`` with Detectron2's ``combine_*``
                thresholds (``combine_overlap_thresh`` 0.5, ``combine_stuff_area_thresh`` 4096,
                ``combine_instances_score_thresh`` 0.5 unless given in ``kwargs``).
            memory_format: "auto", "channels_last" or "contiguous" (see the class docstring).
            inference_autocast: "", "float16" or "bfloat16" (see the class docstring).
            kwargs: arguments of Detectron2's ``PanopticFPN``.
        """
        super().__init__(**kwargs)
        if combiner is None:
            combiner = PanopticHeuristicCombiner(
                overlap_threshold=self.combine_overlap_thresh,
                stuff_area_limit=self.combine_stuff_area_thresh,
                instances_score_threshold=self.combine_instances_score_thresh,
            )
        self.combiner = combiner
        self.memory_format = check_memory_format(memory_format)
        self.inference_dtype = autocast_dtype(inference_autocast)
        self.applied_memory_format = torch.contiguous_format  # what nn.Module gives
        self._apply_memory_format()
        self.roi_heads.register_forward_pre_hook(_contiguous_features)
        watch_loaded_weights(self)  # every load is summed up; one filling no backbone, refused

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        ret = super().from_config(cfg)
        # Detectron2 scales the box predictor's loss_weight dict by lambda_i, but that dict (from
        # ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT) has no "loss_cls" entry, so the classification loss
        # escapes the weight. The paper weights the whole instance loss: add the missing entry.
        predictor = ret["roi_heads"].box_predictor
        predictor.loss_weight.setdefault("loss_cls", cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT)
        ret["combiner"] = build_panoptic_combiner(cfg)
        ret["memory_format"] = check_memory_format(
            cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT, "MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT"
        )
        autocast_dtype(
            cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST,
            "MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST",
        )
        ret["inference_autocast"] = cfg.MODEL.PANOPTIC_FPN_EXT.INFERENCE_AUTOCAST
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Detectron2's ``PanopticFPN.forward``: the loss dict in training, else ``inference``.
        In training, "sem_seg" may have any integer dtype (the mapper's compact uint8 / int16):
        it is moved to the model's device as it is and converted to int64 there.

        Raises:
            ValueError: in training, an input without "sem_seg" (the semantic target), e.g. from
                Detectron2's default ``DatasetMapper``, which makes none from panoptic records.
        """
        if self.training and any("sem_seg" not in x for x in batched_inputs):
            raise ValueError(
                "PanopticFPNExt: a training input has no 'sem_seg' target. The plugin's "
                "panoptic datasets need panoptic_fpn_ext.PanopticDatasetMapper: in a "
                "DefaultTrainer subclass, build_train_loader(cls, cfg) returns "
                "build_detection_train_loader(cfg, mapper=PanopticDatasetMapper(cfg, "
                "is_train=True)), and build_evaluator returns panoptic_fpn_ext.build_evaluator("
                "cfg, dataset_name, output_folder) (README: 'Training with Detectron2's "
                "DefaultTrainer')"
            )
        if self.training:
            batched_inputs = [
                dict(x, sem_seg=x["sem_seg"].to(self.device).long()) for x in batched_inputs
            ]
        return super().forward(batched_inputs)

    def _apply(self, fn: Callable, *args, **kwargs) -> "PanopticFPNExt":
        """``nn.Module._apply`` (behind ``to``, ``cuda``, ``cpu``, ...), then the memory layout
        of ``memory_format`` on the device the model is now on."""
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "applied_memory_format"):  # not while the base class is initialised
            self._apply_memory_format()
        return self

    def train(self, mode: bool = True) -> "PanopticFPNExt":
        """``nn.Module.train`` (``eval`` too), then the memory layout ``memory_format`` gives in
        that mode ("auto" differs between training and inference on CPU). The parameters stay
        the same objects (an optimizer holding them keeps working); their data are converted."""
        super().train(mode)
        if hasattr(self, "applied_memory_format"):  # not while the base class is initialised
            self._apply_memory_format()
        return self

    def _apply_memory_format(self) -> None:
        """Convert the 4-D weights to the layout that ``memory_format`` gives on ``self.device``
        in the current mode (a no-op when they are in it already)."""
        layout = resolve_memory_format(self.memory_format, self.device, self.training)
        if layout != self.applied_memory_format:
            self.applied_memory_format = layout  # first: the conversion calls _apply again
            self.to(memory_format=layout)

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """Detectron2's normalisation, padding and batching: float (B, 3, H, W), in the model's
        memory layout (:attr:`applied_memory_format`)."""
        images = super().preprocess_image(batched_inputs)
        if self.applied_memory_format == torch.contiguous_format:
            return images
        return ImageList(
            images.tensor.contiguous(memory_format=self.applied_memory_format), images.image_sizes
        )

    def _network_precision(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the model's device in :attr:`inference_dtype`, or a no-op."""
        if self.inference_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def inference(
        self, batched_inputs: List[Dict[str, torch.Tensor]], do_postprocess: bool = True
    ) -> Union[List[Dict], Tuple[List[Instances], torch.Tensor]]:
        """
        Args:
            batched_inputs: as in ``forward``; "height"/"width" give the output size.
            do_postprocess: False returns the raw outputs at the padded input size.
        Returns:
            with ``do_postprocess``: per image {"sem_seg": float (C, H, W) logits, "instances":
            Instances (pred_boxes, scores, pred_classes, bool pred_masks (N, H, W)),
            "panoptic_seg": (int32 (H, W), segments_info)} at the requested output size;
            without: (list of Instances at input size with (N, 1, 28, 28) mask probabilities,
            float (B, C, H, W) semantic logits).
        """
        with self._network_precision():
            detector_results, sem_seg_results = super().inference(
                batched_inputs, do_postprocess=False
            )
        if self.inference_dtype is not None:
            detector_results = [_float32_fields(result) for result in detector_results]
            sem_seg_results = sem_seg_results.float()
        if not do_postprocess:
            return detector_results, sem_seg_results
        return [
            self._postprocess_one(sem_seg, detector, inputs)
            for sem_seg, detector, inputs in zip(sem_seg_results, detector_results, batched_inputs)
        ]

    def _postprocess_one(self, sem_seg: torch.Tensor, detector: Instances, inputs: Dict) -> Dict:
        """Resize one image's raw outputs to its output size and combine them.

        Args:
            sem_seg: float (C, H', W') logits at the padded input size.
            detector: the image's raw detections; ``detector.image_size`` is its input size.
            inputs: the image's input dict; "height"/"width" give the output size.
        """
        image_size = detector.image_size
        height = inputs.get("height", image_size[0])
        width = inputs.get("width", image_size[1])
        sem_seg_r = sem_seg_postprocess(sem_seg, image_size, height, width)
        detector_r = detector_postprocess(detector, height, width)
        regions = paste_regions(detector_r.pred_boxes.tensor, height, width)
        panoptic_r = self.combiner(detector_r, semantic_labels(sem_seg_r), mask_boxes=regions)
        return {"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r}


def _contiguous_features(roi_heads: torch.nn.Module, args: Tuple) -> Optional[Tuple]:
    """Forward pre-hook of the RoI heads at inference: the FPN features (``args[1]``, {name:
    (B, C, H, W)}) in contiguous layout, and in float32 under autocast.

    Layout: torchvision's ``roi_align`` reads a channels-last map by first copying it whole; the
    box and the mask pooler would each copy every level. In training the features are left as
    they are: copies made here would all be alive at once, raising the peak memory, where
    ``roi_align``'s own copies are made and freed one level at a time.

    Precision: Detectron2's ``ROIAlign`` casts the boxes to the features' dtype, so bfloat16
    features would pool at box corners rounded to 8 significant bits (a corner at x = 700.3 px
    becomes 700; at 1000-2000 px, steps of 8 px). Pooling float32 features at float32 boxes
    keeps the boxes exact; the heads after the poolers still run under autocast.
    """
    if roi_heads.training:
        return None
    images, features, *rest = args
    device_type = next(iter(features.values())).device.type
    upcast = torch.is_autocast_enabled(device_type)
    features = {
        name: (x.float() if upcast else x).contiguous() for name, x in features.items()
    }
    return (images, features, *rest)


def _float32_fields(instances: Instances) -> Instances:
    """``instances`` with every floating-point field (tensors and ``Boxes``) cast to float32:
    boxes, scores and mask probabilities as the float32 network gives them."""
    result = Instances(instances.image_size)
    for name, value in instances.get_fields().items():
        if isinstance(value, Boxes):
            value = Boxes(value.tensor.float())
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.float()
        result.set(name, value)
    return result
