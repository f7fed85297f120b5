"""The megakernel's opcode and flag numbers come from isa.py, and a check catches any difference."""
import enum
import os
import re
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU here: the kernel modules import Triton's interpreter

import pytest  # noqa: E402

from hyperdecode.engine.mega import constants, isa, kernel  # noqa: E402

MEGA = Path(kernel.__file__).parent


def test_kernel_constants_match_isa():
    assert constants.mismatches() == []
    assert {f"OP_{op.name}" for op in isa.Op} <= set(vars(constants))


def test_a_changed_opcode_number_is_caught(monkeypatch):
    numbers = {op.name: int(op) for op in isa.Op}
    numbers["GEMV"] = 99
    monkeypatch.setattr(isa, "Op", enum.IntEnum("Op", numbers))
    assert constants.mismatches() == ["opcode GEMV: isa.py says 99, the kernel uses 1"]
    monkeypatch.setattr(kernel, "_KERNEL", None)  # the launcher checks before it builds the kernel
    with pytest.raises(RuntimeError, match="megakernel constants do not match isa.py: opcode GEMV"):
        kernel.load_kernel()


def test_a_new_opcode_without_a_kernel_constant_is_caught(monkeypatch):
    numbers = {op.name: int(op) for op in isa.Op}
    new = max(numbers.values()) + 1
    monkeypatch.setattr(isa, "Op", enum.IntEnum("Op", {**numbers, "SOFTCAP": new}))
    assert constants.mismatches() == [f"opcode SOFTCAP: isa.py says {new}, the kernel uses None"]


def test_a_changed_flag_is_caught(monkeypatch):
    monkeypatch.setattr(isa, "SWIGLU_INPUT", 16)
    assert constants.mismatches() == ["flag SWIGLU_INPUT: isa.py says 16, the kernel uses 8"]


def test_a_changed_arena_layout_is_caught(monkeypatch):
    monkeypatch.setattr(isa, "ROW_ALIGN", 8)
    assert constants.mismatches() == ["ROW_ALIGN: isa.py says 8, the kernel uses 16"]


def test_kernel_code_writes_no_opcode_or_flag_numbers():
    for name in ("megakernel.py", "ops.py", "ops_mla.py"):
        source = (MEGA / name).read_text()
        assert not re.search(r"\bop\s*==\s*\d", source), name
        assert not re.search(r"\b(flags|a7)\s*&\s*\d", source), name
