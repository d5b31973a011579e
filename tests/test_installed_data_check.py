"""The dataset check through Detectron2's DefaultTrainer with README's two hooks, from the installed
wheel: bad data is refused when the trainer is built, before training writes anything."""

import os

from test_installed import MAKE_MY_DATA, REGISTER_MY_DATA, readme_python_block

BREAK_MY_TRAIN = """
import json
import numpy as np
from PIL import Image

with open("my_data/annotations/panoptic_train.json") as f:
    data = json.load(f)
images, annotations = data["images"], data["annotations"]
annotations[0]["segments_info"].append({**annotations[0]["segments_info"][0], "id": 4242})
with open("my_data/annotations/panoptic_train.json", "w") as f:
    json.dump(data, f)
wrong_size = "my_data/panoptic_train/" + annotations[1]["file_name"]
Image.fromarray(np.zeros((90, 96, 3), np.uint8)).save(wrong_size)
truncated = "my_data/train/" + images[2]["file_name"]
with open(truncated, "r+b") as f:
    f.truncate(os.path.getsize(truncated) // 2)
print("BAD", wrong_size, truncated)
"""


def test_default_trainer_refuses_bad_data_when_built(installed_plugin, tmp_path):
    code = MAKE_MY_DATA + "import os\n" + BREAK_MY_TRAIN
    code += readme_python_block("### Training with Detectron2's `DefaultTrainer`")
    code += REGISTER_MY_DATA + """
cfg = model_zoo.get_config("quick_start/panoptic_fpn_ext_R_18_shapes.yaml")
cfg.merge_from_list([
    "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)", "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "out",
])
trainer = Trainer(cfg)
trainer.train()
"""
    env = installed_plugin.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = installed_plugin.run(code, cwd=str(tmp_path), env=env)
    assert result.returncode != 0, result.stdout[-2000:]
    wrong_size, truncated = result.stdout.split("BAD ", 1)[1].split()[:2]
    error = result.stderr[result.stderr.rindex("PanopticDataError") :]
    assert "Dataset 'my_train': 3 bad file(s) among 8 records" in error, result.stderr[-3000:]
    for text in ("[4242]", wrong_size, truncated):
        assert text in error, text
    assert not os.path.exists(tmp_path / "out")
