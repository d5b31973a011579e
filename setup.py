"""Install the panoptic_fpn_ext Detectron2 plugin.

torch, torchvision and detectron2 are deliberately NOT in ``install_requires``: torch needs a
platform-specific build (CPU or a CUDA version), and detectron2 is not on PyPI and must be built
from source against the installed torch. See README.md ("Installing into your own environment").
"""
from setuptools import find_packages, setup

setup(
    name="panoptic_fpn_ext",
    version="0.1.0",
    description="Panoptic Feature Pyramid Networks (Kirillov et al., 2019) as a Detectron2 plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["panoptic_fpn_ext", "panoptic_fpn_ext.*"]),
    package_data={"panoptic_fpn_ext": ["model_zoo_configs/*.yaml"]},
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
