"""The decode step from `hyperdecode plan`'s latency model (the hardware row from hyperdecode/hardware.py): batch 1
is the model's own step; a batch of B costs its S = B step without the MTP layer plus B − 1 more sequences' index
keys; the affine fallback and the profile's checks."""
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric.flow.model import DecodePlan, ModelProfile, plan_step_table
from hyperdecode.hardware import machine
from hyperdecode.model.loader import preset_config
from hyperdecode.parallel.latency import estimate

PLAN = DecodePlan(hardware="h200", gpus=8, strategy="tp", context=4096)


def test_the_table_is_the_latency_model_batch_by_batch():
    table = plan_step_table("glm-5", PLAN, 4)
    cfg, hw = preset_config("glm-5"), machine("h200")
    one = estimate(cfg, 8, hw, 4096, "tp", kv_bytes=2)
    assert table[0] == pytest.approx(one.step_us / 1e6)
    four = estimate(cfg, 8, hw, 4096, "tp", mtp=3, kv_bytes=2)
    keys = sum(layer.index_key_bytes for layer in four.layers)
    assert table[3] == pytest.approx((four.step_us - four.mtp_us) / 1e6 + 3 * keys / hw.stream_bps)
    assert table[2] == pytest.approx((table[1] + table[3]) / 2)  # batch 3: between the priced 2 and 4
    assert table[0] < table[1] < table[3]


def test_the_hardware_row_decides_the_step():
    slow = plan_step_table("glm-5", DecodePlan(hardware="h100", context=4096), 1)[0]
    fast = plan_step_table("glm-5", DecodePlan(hardware="b200", context=4096), 1)[0]
    assert fast < slow
    with pytest.raises(ConfigError, match="hardware 'tpu' is not a GPU of the hardware table"):
        plan_step_table("glm-5", DecodePlan(hardware="tpu"), 1)


def test_profile_uses_the_table_or_the_affine_model():
    m = ModelProfile.from_model("glm-5", plan=PLAN, max_batch=4)
    assert m.plan_gpus == 8 and m.step_s(1) == plan_step_table("glm-5", PLAN, 4)[0]
    assert m.step_s(100) == m.step_s(4)  # beyond the table: its last entry (decode_batch bounds the batch)
    assert ModelProfile(decode_step_s=0.02, decode_step_per_seq_s=0.001).step_s(5) == pytest.approx(0.025)
    with pytest.raises(ConfigError, match="decode_steps_s"):
        ModelProfile(decode_steps_s=(0.01, 0.0)).check()
