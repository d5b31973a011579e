"""CroppedMasks: the interface of BitMasks that Detectron2 uses, and Mask R-CNN targets equal to
BitMasks.crop_and_resize bit for bit, including bins that sit exactly on the 0.5 threshold."""

import pickle

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from panoptic_fpn_ext import add_panoptic_fpn_ext_config, merge_config_file
from panoptic_fpn_ext.data import CroppedMasks

TINY = "configs/quick_start/panoptic_fpn_ext_R_18_shapes.yaml"


def random_masks(rng, height, width, count):
    """Irregular blobs of sizes from 1 px to most of the image, some crossing the border, a
    comb (thin stripes) and a single pixel; every mask has a pixel."""
    y, x = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        r = np.exp(rng.uniform(np.log(0.7), np.log(max(height, width) / 2)))
        wave = 1 + 0.3 * np.sin(y / rng.uniform(2, 9) + x / rng.uniform(2, 9))
        masks.append(((y - cy) / r) ** 2 + ((x - cx) / (r * rng.uniform(0.5, 2))) ** 2 < wave)
    comb = (y % 2 == 0) & (x % 3 != 0) & (y < height // 2)
    dot = np.zeros((height, width), bool)
    dot[rng.integers(height), rng.integers(width)] = True
    masks = np.stack(masks + [comb, dot])
    return masks[masks.any(axis=(1, 2))]


def proposal_boxes(rng, gt, count, height, width, kind):
    """Proposal boxes (float32 (count, 4)) for random instances of ``gt`` boxes."""
    index = torch.from_numpy(rng.integers(len(gt), size=count))
    boxes = gt[index].clone()
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) + 1
    if kind == "jittered":
        boxes += torch.from_numpy(rng.normal(0, 0.25, boxes.shape).astype(np.float32)) * size
    elif kind == "integer":
        boxes = (boxes + torch.from_numpy(rng.integers(-3, 4, boxes.shape))).float()
    elif kind == "half":
        boxes = ((boxes * 2 + torch.from_numpy(rng.integers(-4, 5, boxes.shape))) / 2).float()
    elif kind == "anywhere":  # also outside the image
        boxes = torch.from_numpy(rng.uniform(-10, max(height, width) + 10, boxes.shape)).float()
    corners = torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])
    return index, torch.cat(corners, dim=1)


@pytest.mark.parametrize("kind", ["gt", "jittered", "integer", "half", "anywhere"])
def test_targets_equal_bitmasks_targets_bit_for_bit(kind):
    rng = np.random.default_rng(["gt", "jittered", "integer", "half", "anywhere"].index(kind))
    on_threshold = 0
    for height, width, size in ((61, 83, 28), (200, 150, 28), (37, 29, 14)):
        masks = random_masks(rng, height, width, 10)
        full, cropped = BitMasks(torch.from_numpy(masks)), CroppedMasks.from_masks(masks)
        gt = full.get_bounding_boxes().tensor
        for _ in range(4):
            index, boxes = proposal_boxes(rng, gt, 64, height, width, kind)
            expected = full[index].crop_and_resize(boxes, size)
            assert torch.equal(cropped[index].crop_and_resize(boxes, size), expected)
            rois = torch.cat([index[:, None].float(), boxes], dim=1)
            values = roi_align(full.tensor[:, None].float(), rois, size, 1.0, 0, True)
            on_threshold += int((values == 0.5).sum())
    if kind in ("gt", "integer", "half"):
        assert on_threshold > 0  # bins whose float32 value is exactly 0.5 were compared too


def test_structure_follows_bitmasks_indexing_boxes_and_emptiness():
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 40, 50, 8)
    masks[2] = False  # an empty mask
    full, cropped = BitMasks(torch.from_numpy(masks)), CroppedMasks.from_masks(masks)
    assert len(cropped) == len(full) and cropped.image_size == (40, 50)
    assert torch.equal(cropped.tensor, full.tensor)
    assert torch.equal(cropped.get_bounding_boxes().tensor, full.get_bounding_boxes().tensor)
    assert torch.equal(cropped.nonempty(), full.nonempty())
    selections = [
        3,
        slice(1, 6, 2),
        torch.tensor([5, 0, 0, 7]),
        torch.arange(len(full)) % 3 == 0,
        [4, 1],
    ]
    for item in selections:
        expected = full[torch.tensor(item) if isinstance(item, list) else item]
        assert torch.equal(cropped[item].tensor, expected.tensor), item
    assert cropped.to("cpu") is cropped and cropped.device == torch.device("cpu")
    joined = CroppedMasks.cat([cropped[[1, 2]], cropped[5:]])
    assert torch.equal(joined.tensor, BitMasks.cat([full[[1, 2]], full[5:]]).tensor)
    again = pickle.loads(pickle.dumps(cropped))
    assert torch.equal(again.tensor, full.tensor)


def test_no_instance_gives_empty_targets():
    cropped = CroppedMasks.from_masks(np.zeros((0, 10, 12), bool))
    assert len(cropped) == 0 and cropped.tensor.shape == (0, 10, 12)
    assert cropped.crop_and_resize(torch.zeros(0, 4), 28).shape == (0, 28, 28)


def _training_losses(masks_type):
    """The losses of one training step of a tiny PanopticFPNExt, from one seed, with the
    instances' masks as ``masks_type``; Detectron2's RoI heads sample and crop them."""
    cfg = get_cfg()
    add_panoptic_fpn_ext_config(cfg)
    merge_config_file(cfg, TINY)
    cfg.MODEL.PANOPTIC_FPN_EXT.MEMORY_FORMAT = "contiguous"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    rng = np.random.default_rng(1)
    batch = []
    for _ in range(2):
        masks = random_masks(rng, 64, 80, 6)
        instances = Instances((64, 80))
        instances.gt_masks = masks_type(masks)
        instances.gt_boxes = BitMasks(torch.from_numpy(masks)).get_bounding_boxes()
        instances.gt_classes = torch.from_numpy(rng.integers(0, 3, len(masks)))
        image = torch.from_numpy(rng.integers(0, 256, (3, 64, 80), dtype=np.uint8))
        sem_seg = torch.from_numpy(rng.integers(0, 4, (64, 80)).astype(np.uint8))
        batch.append({"image": image, "instances": instances, "sem_seg": sem_seg})
    torch.manual_seed(2)
    with EventStorage():
        return {k: v.item() for k, v in model(batch).items()}


def test_detectron2_roi_heads_train_on_it_as_on_bitmasks():
    bitmasks = _training_losses(lambda m: BitMasks(torch.from_numpy(m)))
    cropped = _training_losses(CroppedMasks.from_masks)
    assert bitmasks == cropped and bitmasks["loss_mask"] > 0


@pytest.mark.gpu
def test_targets_for_boxes_on_a_gpu():
    """On a GPU the structure stays on the CPU (as PolygonMasks does) and its targets arrive on
    the boxes' device, equal to the CPU's BitMasks targets; torchvision's CUDA kernel rounds
    its own way, so BitMasks on the GPU may differ from them only in bins within float32
    rounding of 0.5."""
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 120, 160, 12)
    full, cropped = BitMasks(torch.from_numpy(masks)), CroppedMasks.from_masks(masks)
    index, boxes = proposal_boxes(rng, full.get_bounding_boxes().tensor, 256, 120, 160, "half")
    on_gpu = cropped.to("cuda")[index.cuda()].crop_and_resize(boxes.cuda(), 28)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), full[index].crop_and_resize(boxes, 28))
    cuda_bitmasks = full.to("cuda")[index.cuda()].crop_and_resize(boxes.cuda(), 28).cpu()
    rois = torch.cat([index[:, None].float(), boxes], dim=1)
    values = roi_align(full.tensor[:, None].double(), rois.double(), 28, 1.0, 0, True)[:, 0]
    near_threshold = (values - 0.5).abs() <= 1e-4
    assert not (on_gpu.cpu() != cuda_bitmasks)[~near_threshold].any()
