"""The combiner-input cache (panoptic_fpn_ext.evaluation.combiner_cache): a model output survives
the round trip through a shard file exactly, and a cache of unknown or other origin is refused."""

import os

import pytest
import torch
from detectron2.structures import Instances
from test_combiner import random_case

from panoptic_fpn_ext.evaluation.combiner_cache import (
    CachedImage,
    CacheMismatchError,
    CombinerCache,
    read_shard,
)
from panoptic_fpn_ext.modeling import combine_panoptic


def _output(seed: int, num_classes: int = 5):
    instances, _, _ = random_case(seed, 9, h=29, w=41)
    g = torch.Generator().manual_seed(seed)
    return {"instances": instances, "sem_seg": torch.randn(num_classes, 29, 41, generator=g)}


@pytest.mark.parametrize("num_classes", [5, 300])  # labels stored as uint8, int16
def test_a_model_output_survives_the_shard_round_trip(tmp_path, num_classes):
    outputs = {f"img{k}": _output(k, num_classes) for k in range(3)}
    cache = CombinerCache(str(tmp_path), {"weights_sha256": "a"})
    writer = cache.writer(shard_bytes=1 << 30, shard_images=2)
    for image_id, output in outputs.items():
        writer.add(CachedImage.from_output(image_id, output))
    writer.close()
    assert len(cache.shards()) == 2 and cache.cached_image_ids() == list(outputs)
    images = [image for path in cache.shards() for image in read_shard(path)]
    for image, (image_id, output) in zip(images, outputs.items()):
        instances, boxes = image.instances()
        original = output["instances"]
        assert image.image_id == image_id
        assert torch.equal(instances.pred_masks, original.pred_masks)
        assert torch.equal(instances.scores, original.scores)
        assert torch.equal(instances.pred_classes, original.pred_classes)
        labels = output["sem_seg"].argmax(dim=0)
        assert torch.equal(image.semantic_labels().long(), labels)
        # the same combination as from the model's own output
        expected = combine_panoptic(original, labels, 0.5, 20, 0.3)
        actual = combine_panoptic(instances, image.semantic_labels(), 0.5, 20, 0.3, boxes)
        assert torch.equal(actual[0], expected[0]) and actual[1] == expected[1]
    memory, disk = cache.bytes_per_image()
    assert memory == sum(i.nbytes for i in images) / 3 and disk > 0


def test_other_or_unknown_origin_is_refused_and_rebuild_clears(tmp_path):
    cache = CombinerCache(str(tmp_path), {"weights_sha256": "a", "device": "cpu"})
    writer = cache.writer(1 << 30, 8)
    writer.add(CachedImage.from_output(1, _output(0)))
    writer.close()
    with pytest.raises(CacheMismatchError, match="other weights_sha256 than this run's"):
        CombinerCache(str(tmp_path), {"weights_sha256": "b", "device": "cpu"})
    assert CombinerCache(str(tmp_path), {"weights_sha256": "a", "device": "cpu"}).shards()
    os.remove(tmp_path / "manifest.json")  # shards whose origin is unknown
    with pytest.raises(CacheMismatchError, match="manifest"):
        CombinerCache(str(tmp_path), {"weights_sha256": "a", "device": "cpu"})
    rebuilt = CombinerCache(str(tmp_path), {"weights_sha256": "b"}, rebuild=True)
    assert rebuilt.shards() == [] and (tmp_path / "manifest.json").exists()


def test_an_image_without_instances(tmp_path):
    empty = Instances((7, 9))
    empty.pred_masks = torch.zeros(0, 7, 9, dtype=torch.bool)
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    image = CachedImage.from_output(5, {"instances": empty, "sem_seg": torch.zeros(4, 7, 9)})
    cache = CombinerCache(str(tmp_path), {})
    writer = cache.writer(1 << 30, 8)
    writer.add(image)
    writer.close()
    (read,) = read_shard(cache.shards()[0])
    instances, boxes = read.instances()
    assert instances.pred_masks.shape == (0, 7, 9) and boxes.shape == (0, 4)
