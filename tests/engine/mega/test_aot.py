"""The real (not interpreted) megakernel compiles for Hopper (sm_90) without a GPU: Triton's code generator and
the ptxas its wheel carries catch GPU-only errors the interpreter lets through."""
import json
import subprocess
import sys

import pytest

SM90_SHARED_BYTES = 227 * 1024  # the most shared memory one block may use on an H100 / H200


@pytest.mark.parametrize("args", [["tiny-llama", "--batch", "3", "--prefetch"], ["tiny-qwen3", "--batch", "2"],
                                  ["tiny-dsv32", "--batch", "3"],
                                  ["medium-glm5", "--batch", "1"]])  # medium: nope 192, moe_inter 384 (not 2^n)
def test_megakernel_compiles_for_sm90(args):
    done = subprocess.run([sys.executable, "-m", "hyperdecode.engine.mega.aot", *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["model"] == args[0] and report["arch"] == 90 and report["ptx_lines"] > 1000
    assert 0 < report["shared_bytes"] <= SM90_SHARED_BYTES
