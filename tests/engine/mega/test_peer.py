"""The multi-GPU opcodes in the VM: PEER_WRITE (a one-sided write into a peer's arena and a flag), PEER_WAIT, and
REDUCE, run by one VM per rank in a PeerGroup: an all-reduce of the residual stream (W = 2, 3, 4), the hetero
plan's indexer -> attention hand-off, and deadlocks reported instead of spun on."""
import itertools

import pytest
import torch

from hyperdecode.engine.mega.isa import Op
from hyperdecode.engine.mega.kernel import encode
from hyperdecode.engine.mega.program import Builder
from hyperdecode.engine.mega.vm import VM, DependencyError, PeerGroup

N = 48  # hidden size of the exchanged vectors


def rank_program(stages):
    """A hand-built program: buffers x [N], recv [4 N], sel [N], out [N]; `stages` is a list of instruction lists."""
    b = Builder(torch.float32, 16, 1, 8)
    b.buffers({"x": N, "recv": 4 * N, "sel": N, "out": N})
    for items in stages:
        b.stage([(op, {name: b.buf.get(v, v) if isinstance(v, str) else v for name, v in args.items()})
                 for op, args in items])
    return b.program(1e-6, None)


def all_reduce(rank, world):
    """Every rank pushes its partial x into slot `rank` of every peer's recv, waits for the W - 1 others, adds."""
    writes = [(Op.PEER_WRITE, dict(src="x", dst=None, n=N, peer=q, flag=0)) for q in range(world) if q != rank]
    prog = rank_program([writes, [(Op.PEER_WAIT, dict(flag=0, value=world - 1))],
                         [(Op.REDUCE, dict(src="recv", dst="x", n=N, slots=world))]])
    for ins in prog.instrs:
        if ins.op == Op.PEER_WRITE:
            ins.args["dst"] = prog.buf["recv"] + rank * N  # the same offset on every rank (symmetric arenas)
    return prog


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_reduce_over_peer_writes_in_any_turn_order(world):
    g = torch.Generator().manual_seed(world)
    partials = torch.randn(world, N, generator=g)
    results = []
    for order in list(itertools.permutations(range(world)))[:6]:
        vms = [VM(all_reduce(r, world)) for r in range(world)]
        for r, vm in enumerate(vms):
            vm.rows(vm.prog.buf["x"], N)[0] = partials[r]
        PeerGroup(vms).step([[0]] * world, [[0]] * world, order=list(order))
        results.append(torch.stack([vm.rows(vm.prog.buf["x"], N)[0] for vm in vms]))
    for got in results:
        torch.testing.assert_close(got, partials.sum(0).expand(world, -1), rtol=1e-6, atol=1e-6)
        assert torch.equal(got, results[0])  # the order changes nothing


def test_indexer_rank_hands_its_selection_to_the_attention_ranks():
    """Rank 0 writes its top-k mask into each attention rank's `sel` and bumps flag 1; they wait, then use it."""
    world = 3
    sender = rank_program([[(Op.PEER_WRITE, dict(src="sel", dst="sel", n=N, peer=q, flag=1)) for q in (1, 2)]])
    receiver = rank_program([[(Op.PEER_WAIT, dict(flag=1, value=1))],
                             [(Op.REDUCE, dict(src="sel", dst="out", n=N, slots=1))]])
    vms = [VM(sender), VM(receiver), VM(rank_program([[(Op.PEER_WAIT, dict(flag=1, value=1))],
                                                     [(Op.REDUCE, dict(src="sel", dst="out", n=N, slots=1))]]))]
    mask = (torch.rand(N, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    vms[0].rows(sender.buf["sel"], N)[0] = mask
    PeerGroup(vms).step([[0]] * world, [[0]] * world, order=[2, 1, 0])  # the receivers run first and block
    for vm in vms[1:]:
        assert torch.equal(vm.rows(vm.prog.buf["out"], N)[0], mask)


def test_a_wait_nobody_satisfies_is_a_reported_deadlock():
    waits_for_two = rank_program([[(Op.PEER_WAIT, dict(flag=0, value=2))]])
    writes_once = rank_program([[(Op.PEER_WRITE, dict(src="x", dst="recv", n=N, peer=0, flag=0))]])
    with pytest.raises(DependencyError, match="deadlock: .*rank 0 at instruction 0"):
        PeerGroup([VM(waits_for_two), VM(writes_once)]).step([[0], [0]], [[0], [0]])
    with pytest.raises(DependencyError, match="runs in a PeerGroup"):
        VM(waits_for_two).step([0], [0])
    table = encode(all_reduce(0, 4))  # the new opcodes fit the instruction table
    assert table.shape == (5, 14) and table[0, 0] == int(Op.PEER_WRITE) and table[3, 0] == int(Op.PEER_WAIT)
