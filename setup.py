import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "prunemix" / "_version.py").read_text()
).group(1)

setup(
    name="prunemix",
    version=VERSION,
    description="Gradual magnitude pruning for Keras 3 subclassed models, "
    "custom layers and custom train steps.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["prunemix", "prunemix.*"]),
    python_requires=">=3.10",
    install_requires=["tensorflow>=2.16", "wrapt>=1.14"],
    extras_require={
        "examples": ["scikit-learn>=1.3", "ai-edge-litert>=2.3"],
        "plot": ["matplotlib>=3.7"],
        "litert": ["ai-edge-litert>=2.3"],
        "hub": ["keras-hub>=0.20"],
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "ruff>=0.5",
                 "scikit-learn>=1.3", "keras-hub>=0.20", "jax[cpu]>=0.4.30"],
        "jax": ["jax[cpu]>=0.4.30"],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
