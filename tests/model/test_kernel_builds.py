"""Every vector path of the quantized matmul (model/csrc/qmatmul.c and its qrow_*.h), whatever CPU runs the tests:
each build of the kernel — this CPU's own (-march=native), AVX2 (x86-64-v3), AVX-512 with and without VNNI (on a CPU
that has it; on any x86 CPU through a portable emulation of those intrinsics: SIMDe, Debian's libsimde-dev, plus
tests/model/csrc/avx512_emulation.h), the plain-C loop, and ARM64 NEON with and without dotprod (cross-compiled with
Debian's gcc-aarch64-linux-gnu, run under qemu-user) — runs the same cases through tests/model/csrc/kernel_driver.c
against the same oracles:

- fp32 activations: within 1e-5 of sum |x_k w_nk| of x @ dequantize(W).T (the order of the sums is all that differs);
- int8 activations: the int8 values and scales equal the rule written here in numpy, bit for bit, on every ISA;
  y equals the weights times that rounded x within the same 1e-5; and y is within the stated bound of the exact
  product: sum over blocks of s / 2 * sum |w| (each x moves at most half a step s = max|x| / 127), plus the same
  rounding term.

A build whose compiler or emulator is missing here is skipped with the reason; .ci/run installs them all and sets
HYPERDECODE_REQUIRE_KERNEL_BUILDS=1, under which a missing tool fails the test instead (a CPU without AVX-512 still
skips the native AVX-512 builds: their emulated twins run).
"""
import os
import platform
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import gguf
import numpy as np
import pytest

from hyperdecode.model.quant import CSRC, SOURCES, pack

DRIVER = Path(__file__).with_name("csrc") / "kernel_driver.c"
EMULATION = Path(__file__).with_name("csrc") / "avx512_emulation.h"
BOUND = 1e-5
Q = gguf.GGMLQuantizationType
X86 = platform.machine() in ("x86_64", "AMD64")
ARM = platform.machine() in ("aarch64", "arm64")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[-1].split())


FLAGS = cpu_flags()
AVX2 = {"avx2", "fma", "f16c"}
AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
QEMU = ["qemu-aarch64", "-cpu", "max"]
EMULATED = ["-O1", "-march=x86-64-v2", f"-I{EMULATION.parent}", f'-DHD_EMULATE_AVX512="{EMULATION.name}"']

# name: (compiler, flags, command prefix, the ISA the build must report, why it cannot run here or None)
BUILDS = {
    "native": ("cc", ["-O3", "-march=native"], [], None, None),
    "x86-64-v3": ("cc", ["-O3", "-march=x86-64-v3"], [], "avx2+fma+f16c",
                  None if X86 and AVX2 <= FLAGS else "needs an x86 CPU with AVX2, FMA and F16C"),
    "x86-64-v4": ("cc", ["-O3", "-march=x86-64-v4"], [], "avx512",
                  None if X86 and AVX512 <= FLAGS else "needs a CPU with AVX-512 (F, BW, VL, DQ, CD)"),
    "icelake-server": ("cc", ["-O3", "-march=icelake-server"], [], "avx512+vnni",
                       None if X86 and AVX512 | {"avx512_vnni"} <= FLAGS else "needs a CPU with AVX-512 VNNI"),
    "avx512-emulated": ("cc", EMULATED, [], "avx512",
                        None if X86 and Path("/usr/include/simde").is_dir() else
                        "needs SIMDe's headers (apt-get install libsimde-dev) on x86"),
    "avx512-vnni-emulated": ("cc", [*EMULATED, "-DHD_EMULATE_AVX512VNNI"], [], "avx512+vnni",
                             None if X86 and Path("/usr/include/simde").is_dir() else
                             "needs SIMDe's headers (apt-get install libsimde-dev) on x86"),
    "plain-c": ("cc", ["-O3", "-march=x86-64-v2" if X86 else "-march=armv8-a+nosimd"], [], "plain-c",
                None if X86 or ARM else "the plain-C target is named for x86 and ARM64"),
    "neon": ("aarch64-linux-gnu-gcc", ["-O3", "-march=armv8-a", "-static"], QEMU, "neon",
             None if shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64") else
             "needs gcc-aarch64-linux-gnu and qemu-user (Debian packages)"),
    "neon-dotprod": ("aarch64-linux-gnu-gcc", ["-O3", "-march=armv8.2-a+dotprod", "-static"], QEMU, "neon+dotprod",
                     None if shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64") else
                     "needs gcc-aarch64-linux-gnu and qemu-user (Debian packages)"),
}
if ARM:  # the NEON builds run natively on an ARM64 machine
    for name in ("neon", "neon-dotprod"):
        _, flags, _, isa, _ = BUILDS[name]
        BUILDS[name] = ("cc", [f for f in flags if f != "-static"], [], isa, None)


@lru_cache(maxsize=None)
def driver(name: str, folder: str) -> tuple[list[str], str]:
    """The build's driver binary (compiled once per session): the command to run it and the ISA it reports."""
    compiler, flags, prefix, isa, why = BUILDS[name]
    if why is None and shutil.which(compiler) is None:
        why = f"no compiler {compiler} (a Debian package)"
    if why:
        missing_tool = "Debian" in why or "apt-get" in why
        if missing_tool and os.environ.get("HYPERDECODE_REQUIRE_KERNEL_BUILDS"):
            pytest.fail(f"{name}: {why}")
        pytest.skip(f"{name}: {why}")
    out = Path(folder) / f"driver-{name}"
    cmd = [compiler, *flags, "-fopenmp", f"-I{CSRC}", *map(str, SOURCES), str(DRIVER), "-o", str(out), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name}: {' '.join(cmd)}\n{r.stderr[-2000:]}"
    return [*prefix, str(out)], isa


def run(name: str, folder: Path, kind: str, mode: int, x: np.ndarray, raw: np.ndarray, k: int):
    """y, the int8 activations and their scales as the build computes them."""
    cmd, isa = driver(name, str(folder))
    p = pack(raw, kind, k)
    m, n = x.shape[0], p.qs.shape[0]
    case = folder / f"{name}-case.bin"
    result = folder / f"{name}-result.bin"
    head = np.array([p.kind, mode, m, n, k, p.c is not None, 2], dtype=np.int32)
    parts = [head, p.qs.numpy(), p.d.numpy()] + ([p.c.numpy()] if p.c is not None else []) + [x]
    case.write_bytes(b"".join(np.ascontiguousarray(a).tobytes() for a in parts))
    r = subprocess.run([*cmd, str(case), str(result)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    if isa is not None:
        assert r.stdout.strip() == isa, f"{name} runs the {r.stdout.strip()} path, not {isa}"
    data = result.read_bytes()
    y = np.frombuffer(data, np.float32, m * n).reshape(m, n)
    q = np.frombuffer(data, np.int8, m * k, offset=4 * m * n).reshape(m, k)
    scale = np.frombuffer(data, np.float32, m * k // 32, offset=4 * m * n + m * k).reshape(m, k // 32)
    return y, q, scale, p


def int8_rule(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 activations: per 32-value block s = max|x| / 127 (float32), q = round-half-even(x * (1 / s))."""
    blocks = x.reshape(x.shape[0], -1, 32)
    s = (np.abs(blocks).max(-1) / np.float32(127)).astype(np.float32)
    inverse = np.where(s > 0, np.float32(1) / np.where(s > 0, s, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.rint((blocks * inverse[..., None]).astype(np.float32)).astype(np.int8)
    return q.reshape(x.shape), s


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("kernel-builds")


@pytest.mark.parametrize("name", list(BUILDS))
def test_every_build_keeps_the_bounds(name, folder):
    rng = np.random.default_rng(7)
    for kind in ("Q4_0", "Q4_1", "Q8_0"):
        for k, m in ((96, 5), (576, 3), (1056, 1)):  # 3, 18 and 33 blocks: every tail of the pair loops
            n = 67
            w = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
            raw = gguf.quants.quantize(w, getattr(Q, kind))
            exact_w = np.asarray(gguf.quants.dequantize(raw, getattr(Q, kind)), dtype=np.float64)
            x = (rng.standard_normal((m, k)) * rng.choice([0.01, 1.0, 30.0], (m, k))).astype(np.float32)
            scale = np.abs(x).astype(np.float64) @ np.abs(exact_w).T
            exact = x.astype(np.float64) @ exact_w.T

            y, q, s, p = run(name, folder, kind, 0, x, raw, k)
            assert (np.abs(y - exact) <= BOUND * scale + 1e-7).all(), f"{name} {kind} K={k} fp32"

            y8, q, s, p = run(name, folder, kind, 1, x, raw, k)
            rule_q, rule_s = int8_rule(x)
            assert (q == rule_q).all() and (s == rule_s).all(), f"{name} {kind}: int8 activations differ"
            rounded = (rule_q.reshape(m, -1, 32) * rule_s[..., None].astype(np.float64)).reshape(m, k)
            oracle = rounded @ exact_w.T  # the blocks' own c meets the rounded block's sum: W times rounded x
            oracle_scale = np.abs(rounded) @ np.abs(exact_w).T
            assert (np.abs(y8 - oracle) <= BOUND * oracle_scale + 1e-7).all(), f"{name} {kind} K={k} int8"
            half_steps = (rule_s.astype(np.float64) / 2) @ np.abs(exact_w).reshape(n, -1, 32).sum(-1).T
            stated = half_steps + BOUND * (scale + oracle_scale) + 1e-7
            assert (np.abs(y8 - exact) <= stated).all(), f"{name} {kind} K={k}: int8 outside its stated bound"
