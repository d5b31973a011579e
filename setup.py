"""Install the panoptic_fpn_ext Detectron2 plugin.

torch, torchvision and detectron2 are deliberately NOT in ``install_requires``: torch needs a
platform-specific build (CPU or a CUDA version), and detectron2 is not on PyPI and must be built
from source against the installed torch. See README.md ("Installing into your own environment").
"""
import glob
import os
import shutil
from typing import List

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def model_zoo_configs() -> List[str]:
    """Put the repository's ``configs/`` into the package as ``panoptic_fpn_ext/model_zoo/configs``.

    As Detectron2's ``setup.py`` does: a symbolic link (a copy where links are not possible) made
    at build time, so that ``configs/`` stays the only copy in the repository; the wheel then holds
    the files themselves. Returns the package-data patterns of the configs.
    """
    source = os.path.join(ROOT, "configs")
    destination = os.path.join(ROOT, "panoptic_fpn_ext", "model_zoo", "configs")
    if os.path.isdir(source):  # building from the repository (not from an unpacked sdist)
        if os.path.islink(destination):
            os.unlink(destination)
        elif os.path.isdir(destination):
            shutil.rmtree(destination)
        try:
            os.symlink(source, destination)
        except OSError:
            shutil.copytree(source, destination)
    return ["configs/**/*.yaml", "configs/**/*.py", "configs/*.yaml"]


setup(
    name="panoptic_fpn_ext",
    version="0.1.0",
    description="Panoptic Feature Pyramid Networks (Kirillov et al., 2019) as a Detectron2 plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["panoptic_fpn_ext", "panoptic_fpn_ext.*"]),
    package_data={"panoptic_fpn_ext.model_zoo": model_zoo_configs()},
    install_requires=[
        "numpy",
        "Pillow",
        # The PQ evaluator's pass over each ground-truth PNG: numba compiles its row unfiltering
        # and pixel counting (GIL-free); isal (ISA-L, 1.7x zlib-ng's speed here) inflates the PNG
        # data, also without the GIL.
        "numba",
        "isal",
        "fvcore>=0.1.5",
        "iopath",
        "pycocotools>=2.0.2",
        "cityscapesscripts>=2.2",
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "hypothesis", "hotcoco", "panopticapi-lite"]},
)
