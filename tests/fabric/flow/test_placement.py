"""Instances on servers: the P:D ratio counts GPUs (instances of different sizes mix), roles alternate as asked,
and the spread layout puts a ZCube instance across blocks and residues (so its rail peers share no switch)."""
import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.flow.config import SimConfig
from hyperdecode.fabric.flow.placement import place, server_order


def test_packed_fills_a_zcube_block_and_spread_crosses_blocks_and_residues():
    t = zcube(32)  # blocks of 32 GPUs (4 servers), 32 residue switches
    att = t.attachments()
    packed = place(t, SimConfig(gpus_per_instance=32, layout="packed")).prefill[0]
    assert len(set(att[packed, 0])) == 1  # one block switch: the all-to-all would use port A only
    for instance in place(t, SimConfig(gpus_per_instance=32, layout="spread")).prefill:
        servers = instance.reshape(4, 8)
        assert len(set(att[servers[:, 0], 0])) == 4  # four blocks
        for rank in range(8):  # rail peers: different blocks and different residues, so no shared switch
            peers = servers[:, rank]
            assert len(set(att[peers, 0])) == 4 and len(set(att[peers, 1])) == 4


def test_auto_spreads_on_zcube_and_packs_on_roft():
    assert (server_order(roft(512, 64), "auto") == np.arange(64)).all()
    assert (server_order(zcube(32), "auto") == server_order(zcube(32), "spread")).all()
    order = server_order(zcube(32), "spread")
    assert sorted(order.tolist()) == list(range(128))  # every server once


def test_the_ratio_counts_gpus_and_instances_of_both_sizes_mix():
    p = place(roft(512, 64), SimConfig(gpus_per_instance=32, decode_gpus=8, pd_ratio=(3, 1)))
    assert len(p.prefill) == 12 and len(p.decode) == 16
    every = np.concatenate(p.prefill + p.decode)
    assert sorted(every.tolist()) == list(range(512))
    contiguous = place(roft(512, 64), SimConfig(gpus_per_instance=32, decode_gpus=8, placement="contiguous"))
    assert contiguous.prefill[0][0] == 0 and contiguous.decode[0][0] == 256


@pytest.mark.parametrize("cfg, message", [
    (SimConfig(pd_ratio=(2, 1)), "does not fit 2 instances"),
    (SimConfig(gpus_per_instance=5), "gpus_per_instance 5 must divide the 16 GPUs"),
    (SimConfig(decode_gpus=3), "decode_gpus 3 must be a multiple or a divisor of a server's 8 GPUs"),
    (SimConfig(gpus_per_instance=16, decode_gpus=8), "leaves no room"),
])
def test_bad_layouts_are_named(cfg, message):
    with pytest.raises(ConfigError, match=message):
        place(zcube(4), cfg)
