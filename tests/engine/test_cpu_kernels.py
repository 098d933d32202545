"""The compiled CPU kernels: built by `make install` on Linux x86-64 (so a build that silently fell
back to pure MLX fails here), switched off and on, and capped to an instruction set."""

import os
import platform
import subprocess
import sys

import pytest

from engine import cpu_kernels

BUILT_HERE = sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.mark.skipif(not BUILT_HERE, reason="the kernels are only required to build on Linux x86-64")
def test_the_extension_was_built_and_loads():
    assert cpu_kernels.kernels() is not None, cpu_kernels.describe()
    assert cpu_kernels.describe().startswith("CPU kernels (")


@pytest.mark.skipif(not BUILT_HERE, reason="needs the extension")
def test_turning_the_kernels_off_selects_pure_mlx():
    with cpu_kernels.disabled():
        assert cpu_kernels.kernels() is None
        assert cpu_kernels.describe() == "pure MLX (CPU kernels turned off)"
    assert cpu_kernels.kernels() is not None


@pytest.mark.skipif(not BUILT_HERE, reason="needs the extension")
@pytest.mark.parametrize("cap", ["generic", "avx2"])
def test_the_isa_can_be_capped_below_what_the_cpu_has(cap):
    code = "from engine import cpu_kernels; print(cpu_kernels.kernels().isa())"
    env = {**os.environ, "PAGEDMLX_ISA": cap}
    isa = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert isa.stdout.strip() in {cap, "generic"}
