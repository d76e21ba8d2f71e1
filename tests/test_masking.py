"""MaskSet: thresholds, AND-only updates, the three application points, safetensors, broadcast, select_keep."""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from topoprune.errors import CheckpointError, ConfigError, TensorError
from topoprune.graph.binding import canonical, write_canonical
from topoprune.graph.masks import MaskSet, broadcast_object, select_keep


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_from_threshold_and_sparsity():
    m = small_model()
    with torch.no_grad():
        m[0].weight[:2] = 1e-5
    ms = MaskSet.from_threshold(m, ["0.weight", "2.weight"], eps=1e-4)
    assert ms.names() == ["0.weight", "2.weight"] and "0.weight" in ms and len(ms) == 2
    assert ms.masks["0.weight"].dtype == torch.bool
    assert not ms.masks["0.weight"][:2].any() and ms.masks["0.weight"][2:].all()
    assert ms.sparsity()["0.weight"] == pytest.approx(12 / 48)
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="eps"):
            MaskSet.from_threshold(m, ["0.weight"], eps)


def test_update_is_and_and_never_revives():
    ms = MaskSet({"w": torch.tensor([True, True, False, False])})
    assert ms.update("w", torch.tensor([True, False, True, False])) == 1
    assert ms.masks["w"].tolist() == [True, False, False, False]
    assert ms.update("w", torch.ones(4, dtype=torch.bool)) == 0      # all-True cannot revive
    assert ms.masks["w"].tolist() == [True, False, False, False]
    assert ms.update("new", torch.tensor([1, 0])) == 1                # created, ints -> bool
    assert ms.masks["new"].dtype == torch.bool
    with pytest.raises(TensorError, match="shape"):
        ms.update("w", torch.ones(5, dtype=torch.bool))


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=0.1, amsgrad=True),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
], ids=["adamw", "adam-amsgrad", "sgd-momentum"])
def test_three_application_points_keep_pruned_entries_zero(make_opt):
    m = small_model()
    opt = make_opt(m.parameters())
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    # one dense step first, so every optimiser state is populated and nonzero
    nn.functional.mse_loss(m(x), y).backward()
    opt.step()
    opt.zero_grad()
    ms = MaskSet.from_threshold(m, ["0.weight", "2.weight", "0.bias"], eps=0.2)
    ms.apply_to_weights(m)
    assert ms.apply_to_optimizer(opt, m) >= 3
    for _ in range(5):
        nn.functional.mse_loss(m(x), y).backward()
        ms.apply_to_grads(m)
        for name, mask in ms.masks.items():
            assert (m.get_parameter(name).grad[~mask] == 0).all()
        opt.step()
        ms.apply_to_weights(m)
        ms.apply_to_optimizer(opt, m)
        opt.zero_grad()
        for name, mask in ms.masks.items():
            p = m.get_parameter(name)
            assert (p[~mask] == 0).all() and (p[mask] != 0).any()
            for key, val in opt.state[p].items():
                if isinstance(val, torch.Tensor) and val.shape == p.shape:
                    assert (val[~mask] == 0).all(), key


def test_mask_shape_mismatch_is_reported():
    m = small_model()
    ms = MaskSet({"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(TensorError, match="0.weight"):
        ms.apply_to_weights(m)


def test_state_dict_round_trip_is_a_copy():
    ms = MaskSet({"a": torch.tensor([[True, False]]), "b": torch.tensor([False, True, True])})
    sd = ms.state_dict()
    sd["a"][0, 0] = False
    assert ms.masks["a"][0, 0]                  # state_dict gave copies
    other = MaskSet()
    other.load_state_dict(ms.state_dict())
    assert other.names() == ["a", "b"]
    assert all(torch.equal(other.masks[k], ms.masks[k]) for k in ms.masks)


def test_save_load_round_trip_with_metadata_and_extra(tmp_path):
    g = torch.Generator().manual_seed(1)
    ms = MaskSet({"layer.0.weight": torch.rand(5, 7, generator=g) > 0.5, "x": torch.tensor([True, False])})
    meta = {"step": 12, "head_decisions": [{"layer": "encoder.0", "replaced_by": {"1": 3}}]}
    path = ms.save(tmp_path / "masks.safetensors", meta, extra={"score": torch.arange(3.0)})
    assert path.is_file() and sorted(os.listdir(tmp_path)) == ["masks.safetensors"]  # no temp file left
    back = MaskSet.load(path)
    assert back.names() == ms.names()
    assert all(torch.equal(back.masks[k], ms.masks[k]) and back.masks[k].dtype == torch.bool for k in ms.masks)
    assert back.metadata == meta
    assert torch.equal(back.extra["score"], torch.arange(3.0))


def test_save_rejects_non_json_metadata_and_load_rejects_bad_files(tmp_path):
    ms = MaskSet({"a": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="JSON"):
        ms.save(tmp_path / "m.safetensors", {"x": object()})
    with pytest.raises(CheckpointError, match="no such"):
        MaskSet.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a valid"):
        MaskSet.load(bad)
    from safetensors.torch import save_file
    save_file({"a": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a topoprune"):
        MaskSet.load(tmp_path / "foreign.safetensors")


def test_select_keep_exact_count_and_index_tie_break():
    w = torch.tensor([[1.0, -3.0, 2.0], [2.0, 0.5, -2.0]])
    keep = select_keep(w, 0.5)                                # k = 3: 3, then the first two of the 2.0 ties
    assert keep.tolist() == [[False, True, True], [True, False, False]]
    assert select_keep(w, 0.0).sum() == 0 and select_keep(w, 1.0).all()
    flat = torch.ones(10)
    assert select_keep(flat, 0.3).tolist() == [True] * 3 + [False] * 7
    big = torch.randn(37, 53, generator=torch.Generator().manual_seed(0))
    for frac in (0.1, 0.33, 0.7, 0.999):
        assert int(select_keep(big, frac).sum()) == round(frac * big.numel())
        assert torch.equal(select_keep(big, frac), select_keep(big.clone(), frac))


def test_select_keep_allowed_never_revives_and_row_scores_favour_hubs():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 3.0]])
    allowed = torch.tensor([[True, False, True, True], [True, True, True, True]])
    keep = select_keep(w, 0.5, allowed=allowed)
    assert int(keep.sum()) == 4 and not (keep & ~allowed).any()
    keep = select_keep(w, 1.0, allowed=allowed)
    assert torch.equal(keep, allowed)                          # asks for 8, allowed has 7: keeps the 7
    plain = select_keep(w, 0.25)                               # magnitude: the two 3.0 entries
    assert plain.tolist() == [[False] * 4, [False, False, True, True]]
    c = torch.tensor([1.0, 0.25])                              # row 0 a hub: 1.0 * 1 > 3.0 * 0.25
    hub = select_keep(w, 0.25, c)
    assert hub.tolist() == [[True, True, False, False], [False] * 4]
    assert torch.equal(select_keep(w, 0.25, torch.ones_like(w)), plain)


def test_select_keep_rejects_bad_input():
    w = torch.ones(2, 3)
    with pytest.raises(ConfigError):
        select_keep(w, 1.5)
    with pytest.raises(TensorError, match="scores"):
        select_keep(w, 0.5, torch.ones(3))
    with pytest.raises(TensorError, match="NaN"):
        select_keep(torch.tensor([[float("nan"), 1.0]]), 0.5)
    with pytest.raises(TensorError, match="allowed"):
        select_keep(w, 0.5, allowed=torch.ones(3, dtype=torch.bool))


def test_canonical_views_of_transposed_and_fused_tensors():
    stored = torch.arange(24.0).reshape(4, 6).requires_grad_()   # Conv1D-style [in=4, out=6]
    spec = SimpleNamespace(transpose=True, rows=((2, 4),))
    piece = canonical(stored, spec)
    assert piece.shape == (2, 4) and torch.equal(piece, stored.detach().t()[2:4])
    piece.sum().backward()                                        # gradient reaches the parameter
    assert stored.grad[:, 2:4].eq(1).all() and stored.grad[:, [0, 1, 4, 5]].eq(0).all()
    inter = SimpleNamespace(transpose=False, rows=((0, 1), (3, 5)))  # interleaved: several ranges
    t = torch.arange(12.0).reshape(6, 2)
    assert canonical(t, inter).tolist() == [[0, 1], [6, 7], [8, 9]]
    write_canonical(t, inter, torch.zeros(3, 2))
    assert t[[0, 3, 4]].eq(0).all() and t[[1, 2, 5]].ne(0).all()
    bias = torch.arange(6.0)
    assert canonical(bias, spec).tolist() == [2.0, 3.0]           # 1-D: rows only, never transposed
    write_canonical(stored.detach(), spec, torch.full((2, 4), -1.0))
    assert stored.detach()[:, 2:4].eq(-1).all()


def test_broadcast_is_a_no_op_without_distributed():
    ms = MaskSet({"a": torch.tensor([True, False])})
    assert ms.broadcast() is False and ms.masks["a"].tolist() == [True, False]
    assert broadcast_object({"x": 1}) == {"x": 1}


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from topoprune.graph.masks import MaskSet, broadcast_object
    rank, init = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    masks = {"w": torch.rand(4, 5, generator=g) > 0.5}
    if rank == 1:
        masks["only_on_1"] = torch.ones(3, dtype=torch.bool)
    ms = MaskSet(masks)
    assert ms.broadcast(src=0)
    ref = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    assert ms.names() == ["w"] and torch.equal(ms.masks["w"], ref), rank
    assert broadcast_object({"rank": rank}) == {"rank": 0}
    dist.destroy_process_group()
    print("ok", rank)
""")


def test_broadcast_two_processes_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), init], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "ok 0" in outs[0] and "ok 1" in outs[1]
