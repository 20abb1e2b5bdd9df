"""Builds and installs the hxq Python package: the extension hxq._hxq comes from this repository's
CMake project (target `_hxq`, the same engine library as the `hxq` binary), built with Debian's
pybind11. Offline: needs only setuptools, cmake, a C++ compiler and the build dependencies of
scripts/install-deps.sh.

    /usr/bin/python3 -m venv --system-site-packages ~/.venvs/hxq
    ~/.venvs/hxq/bin/python -m pip install --no-build-isolation ./python

Environment: HXQ_BUILD_DIR=DIR reuses a configured CMake build directory (e.g. ../build, where
`cmake --build` already compiled the engine); otherwise python/build-cmake is used.
HXQ_BUILD_JOBS sets the parallel jobs (default: all cores).
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.path.abspath(os.environ.get("HXQ_BUILD_DIR") or os.path.join(HERE, "build-cmake"))
        jobs = os.environ.get("HXQ_BUILD_JOBS") or str(os.cpu_count() or 1)
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            cmd = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DHXQ_BUILD_TESTS=OFF",
                   "-DHXQ_BUILD_BENCH=OFF", "-DHXQ_PYTHON=ON", f"-DPython_EXECUTABLE={sys.executable}"]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            subprocess.check_call(cmd)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "_hxq", "-j", jobs])
        pydir = os.path.join(build_dir, "python")
        built = [f for f in os.listdir(pydir) if f.startswith("_hxq") and f.endswith(".so")] if os.path.isdir(pydir) else []
        if len(built) != 1:
            raise RuntimeError(f"{pydir}: expected one _hxq*.so after building, found {built or 'none'} "
                               "(is pybind11-dev installed? see scripts/install-deps.sh)")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(pydir, built[0]), dest)


setup(
    name="hxq",
    version="0.1.0",
    description="Calibration-free codebook compression of language models, run from the compressed form",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["hxq"],
    package_data={"hxq": ["py.typed", "*.pyi"]},
    ext_modules=[CMakeExtension("hxq._hxq")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
    zip_safe=False,
)
