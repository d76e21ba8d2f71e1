"""Corrupted safetensors files: every one ends with one ``error:`` line, exit code 2, and nothing written.

A few hundred files are derived from one good checkpoint by a seeded generator: bytes of the JSON
header replaced by bytes that can never appear there, truncation anywhere, a wrong or absurd header
length, headers with wrong dtypes, shapes and offsets, headers that are not objects, empty and
header-only files, and huge declared tensors backed by sparse files. Each is given to
``topoprune analyze`` in-process.
"""
import json
import random
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from topoprune.cli import main

N_CASES = 300
#: Bytes that are never valid in an ASCII JSON header: control characters other than JSON
#: whitespace (invalid JSON anywhere) and bytes >= 0x80 (invalid UTF-8 next to ASCII).
BAD_BYTES = [b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D, 0x20)] + list(range(0x80, 0x100))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The bytes of a valid two-block checkpoint, and its header and data."""
    g = torch.Generator().manual_seed(0)
    state = {"layers.0.mlp.fc1.weight": torch.randn(16, 8, generator=g),
             "layers.0.mlp.fc2.weight": torch.randn(8, 16, generator=g),
             "layers.1.mlp.fc1.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16)}
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    save_file(state, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, json.loads(raw[8:8 + n]), raw[8 + n:]


def _pack(header, data: bytes = b"", length=None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _tensor_names(header):
    return sorted(k for k in header if k != "__metadata__")


def _flip(rng, raw, header, data):
    n = struct.unpack("<Q", raw[:8])[0]
    out = bytearray(raw)
    positions = set()
    for _ in range(rng.randint(1, 3)):
        p = rng.randrange(8, 8 + n)
        if not any(abs(p - q) < 2 for q in positions):  # apart: no two can form a valid UTF-8 sequence
            positions.add(p)
    for p in positions:
        out[p] = rng.choice(BAD_BYTES)
    return bytes(out)


def _truncate(rng, raw, header, data):
    return raw[:rng.randrange(0, len(raw))]


def _length_field(rng, raw, header, data):
    n = struct.unpack("<Q", raw[:8])[0]
    choice = rng.randrange(5)
    if choice == 0:
        value = rng.randrange(0, 2 ** 64)
    elif choice == 1:
        value = n + rng.choice([-1, 1]) * rng.randint(1, 64)
    elif choice == 2:
        value = rng.choice([0, 1, 2 ** 63, 2 ** 64 - 1, 100_000_000, len(raw)])
    elif choice == 3:
        value = rng.randrange(n + 1, 2 ** 32)
    else:
        value = rng.randrange(0, n)
    return struct.pack("<Q", max(0, min(value, 2 ** 64 - 1))) + raw[8:]


_BAD_DTYPES = ["F33", "", "f32", "float32", 5, None, ["F32"], "F32 ", "I33", "BF"]
_BAD_SHAPES = [[-1, 8], [16, -8], [2 ** 40, 2 ** 40], [2 ** 62, 2 ** 62, 2 ** 62], [16], [16, 8, 2], [],
               ["16", 8], [16.5, 8], [[16], 8], None, "16x8", [0, 8], [17, 8], [16, 9]]


def _bad_offsets(rng, start, end, total):
    return rng.choice([
        [-1, end], [start, -8], [end, start] if end > start else [start + 1, start], [start, end + 1],
        [start, total + rng.randint(1, 10 ** 6)], [start, 2 ** 64 + 5], [start], [start, end, end],
        [start + 1, end + 1], [start - 1, end - 1] if start else [1, end + 1], "0-512", None,
        [float(start), float(end)], [start, end + 2 ** 40],
    ])


def _json_fields(rng, raw, header, data):
    header = json.loads(json.dumps(header))
    names = _tensor_names(header)
    name = rng.choice(names)
    entry = header[name]
    start, end = entry["data_offsets"]
    kind = rng.randrange(7)
    if kind == 0:
        entry["dtype"] = rng.choice(_BAD_DTYPES)
    elif kind == 1:
        entry["shape"] = rng.choice(_BAD_SHAPES)
        if entry["shape"] == [0, 8]:  # an empty tensor that still owns its bytes: the offsets no longer add up
            entry["data_offsets"] = [start, start]
    elif kind == 2:
        entry["data_offsets"] = _bad_offsets(rng, start, end, len(data))
    elif kind == 3:
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 4:  # all tensors overlap the first one
        for other in names:
            header[other]["data_offsets"] = [0, header[other]["data_offsets"][1] - header[other]["data_offsets"][0]]
        if len({tuple(header[o]["data_offsets"]) for o in names}) == len(names):
            header[name]["data_offsets"] = [1, 1 + end - start]
    elif kind == 5:  # every dtype an integer of the same width: a valid file without float matrices
        for other in names:
            header[other]["dtype"] = {"F32": "I32", "BF16": "I16", "F16": "I16"}[header[other]["dtype"]]
    else:
        header["__metadata__"] = rng.choice([{"a": 1}, [1, 2], "text", {"a": None}, {"a": {"b": "c"}}])
    return _pack(header, data)


def _not_a_header(rng, raw, header, data):
    text = rng.choice([b"[]", b"[1, 2]", b'"text"', b"null", b"123", b"{", b"}", b'{"a": }', b"{}{}",
                       b'{"a": {"dtype": "F32"}', b"{" + b" " * 40, b'{"a": 1}', b'{"a": []}'])
    return _pack(text, data if rng.random() < 0.5 else b"")


def _empty_or_header_only(rng, raw, header, data):
    n = struct.unpack("<Q", raw[:8])[0]
    return rng.choice([b"", raw[:8], raw[:8 + n], raw[:8 + n] + data[: rng.randrange(0, len(data))]])


def _empty_tensors_only(rng, raw, header, data):
    return _pack({"layers.0.mlp.fc1.weight": {"dtype": "F32", "shape": [0, 8], "data_offsets": [0, 0]}})


MUTATORS = [_flip, _truncate, _length_field, _json_fields, _not_a_header, _empty_or_header_only]


def _cases(good):
    raw, header, data = good
    rng = random.Random(0)
    cases = [("empty-tensors-only", _empty_tensors_only(rng, raw, header, data))]
    for i in range(N_CASES - 1):
        mutate = MUTATORS[i % len(MUTATORS)]
        cases.append((f"{i}-{mutate.__name__.strip('_')}", mutate(rng, raw, header, data)))
    return cases


def _check(result, out) -> str | None:
    """What is wrong with one run (``None``: a clean refusal)."""
    err = result.stderr
    lines = err.strip().splitlines()
    if result.exit_code != 2:
        return f"exit code {result.exit_code}: {err.strip()[:300]!r}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr is not one error line: {err[:300]!r}"
    if "Traceback" in err or "internal error" in err:
        return f"not a user error: {err[:300]!r}"
    leftovers = [p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}.")]
    if leftovers:
        return f"output written: {leftovers}"
    return None


def test_corrupted_safetensors_are_refused_cleanly(tmp_path, good):
    """~300 corrupted files: each gives exit 2, one ``error:`` line, no traceback and no output."""
    runner = CliRunner()
    path, out = tmp_path / "case.safetensors", tmp_path / "out"
    failures = []
    for name, content in _cases(good):
        path.write_bytes(content)
        result = runner.invoke(main, ["analyze", str(path), "--out", str(out), "-j", "1", "--no-fits",
                                      "--no-modularity"])
        problem = _check(result, out)
        if problem:
            failures.append(f"{name}: {problem}")
    assert not failures, f"{len(failures)} of {N_CASES} cases:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("shape,dtype", [([2 ** 19, 2 ** 19], "F32"), ([2 ** 21, 2 ** 18], "BF16")])
def test_huge_declared_tensor_on_a_sparse_file(tmp_path, shape, dtype):
    """A well-formed header declaring a tensor larger than memory (its data a sparse file): refused by name."""
    size = shape[0] * shape[1] * {"F32": 4, "BF16": 2}[dtype]
    header = json.dumps({"layers.0.mlp.fc1.weight": {"dtype": dtype, "shape": shape,
                                                     "data_offsets": [0, size]}}).encode()
    path, out = tmp_path / "huge.safetensors", tmp_path / "out"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + size)  # sparse: takes no disk space
    result = CliRunner().invoke(main, ["analyze", str(path), "--out", str(out), "-j", "1", "--no-fits",
                                       "--no-modularity"])
    assert _check(result, out) is None, result.stderr
    assert "layers.0.mlp.fc1.weight: needs" in result.stderr and "GiB available" in result.stderr


# ----------------------------------------------------------------------------- config.json
_CONFIG_VALUES = [0, -1, 1, 2, 3, 4, 7, 16, 64, 10 ** 9, 2 ** 70, None, "x", "", [], {}, 1.5, True, -0.0,
                  "llama", "gpt2", "falcon", "gpt_neox", "bloom", "internlm2", "t5", "bert"]
_CONFIG_KEYS = ["hidden_size", "n_embd", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
                "model_type", "multi_query", "new_decoder_architecture", "is_encoder_decoder", "d_model", "n_head_kv"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A LLaMA-like block (separate q/k/v, grouped kv heads) and a GPT-2-like one (fused Conv1D c_attn)."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path_factory.mktemp("configs")
    llama = {f"model.layers.0.{k}.weight": torch.randn(s, generator=g) for k, s in (
        ("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (32, 64)), ("self_attn.v_proj", (32, 64)),
        ("self_attn.o_proj", (64, 64)), ("mlp.gate_proj", (128, 64)), ("mlp.up_proj", (128, 64)),
        ("mlp.down_proj", (64, 128)))}
    gpt2 = {f"h.0.{k}.weight": torch.randn(s, generator=g) for k, s in (
        ("attn.c_attn", (64, 192)), ("attn.c_proj", (64, 64)), ("mlp.c_fc", (64, 256)), ("mlp.c_proj", (256, 64)))}
    configs = {"llama": ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "head_dim": 16}, llama),
               "gpt2": ({"model_type": "gpt2", "n_embd": 64, "n_head": 4}, gpt2)}
    out = {}
    for name, (config, state) in configs.items():
        (root / name).mkdir()
        save_file(state, root / name / "model.safetensors")
        out[name] = (root / name, config)
    return out


def test_corrupted_config_json_never_crashes(tmp_path, model_dirs):
    """Head counts and sizes replaced by wrong, absurd or ill-typed values in config.json: the analysis
    goes on (exit 0) or stops with one error line (exit 2) and writes nothing -- never a traceback."""
    rng = random.Random(0)
    runner = CliRunner()
    out = tmp_path / "out"
    failures, codes = [], []
    for i in range(80):
        directory, config = model_dirs["llama" if i % 2 else "gpt2"]
        config = dict(config)
        for _ in range(rng.randint(1, 3)):
            config[rng.choice(_CONFIG_KEYS)] = rng.choice(_CONFIG_VALUES)
        (directory / "config.json").write_text(json.dumps(config))
        result = runner.invoke(main, ["analyze", str(directory), "--out", str(out), "-j", "1", "--no-fits",
                                      "--no-modularity", "--block-modularity", "--model-graph"])
        codes.append(result.exit_code)
        errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
        if result.exit_code == 0:
            problem = f"stderr: {errors}" if errors else None
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        else:
            problem = _check(result, out)
        if problem:
            failures.append(f"{i} {json.dumps(config)}: {problem}")
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:10])
    assert 0 in codes and 2 in codes  # both outcomes exercised
