"""Generated LLaMA-like sharded safetensors checkpoints for the memory and scaling benchmarks,
header edits, and the measured process.

:func:`generate_llama` writes a random checkpoint (fp32 TinyLlama-1.1B widths by default; any LLaMA
geometry, tied embeddings and bf16 too), one shard in memory at a time; :func:`set_header_length`
rewrites a shard's header padding so that its length does or does not start with the byte that
marks a pickle; :func:`sniff_shards` reports how topoprune's loader classifies the shards;
:func:`rss_child` is the body of the process whose peak memory ``bench_analysis.py`` and
``bench_scaling.py`` measure (it imports nothing heavy but topoprune).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

# LLaMA-like geometry for the memory test (TinyLlama-1.1B widths, 10 blocks, fp32).
LLAMA = dict(hidden=2048, ffn=5632, heads=32, kv_heads=4, layers=10, vocab=32000)
MAX_SHARD_BYTES = 700e6


def llama_tensors(g: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in the order transformers writes a LLaMA checkpoint (no ``lm_head``
    when ``g["tie"]``: the output layer is the embedding)."""
    h, f, hd = g["hidden"], g["ffn"], g["hidden"] // g["heads"]
    out = [("model.embed_tokens.weight", (g["vocab"], h))]
    for i in range(g["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (g["heads"] * hd, h)),
                (p + "self_attn.k_proj.weight", (g["kv_heads"] * hd, h)),
                (p + "self_attn.v_proj.weight", (g["kv_heads"] * hd, h)),
                (p + "self_attn.o_proj.weight", (h, g["heads"] * hd)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    out += [("model.norm.weight", (h,))] + ([] if g.get("tie") else [("lm_head.weight", (g["vocab"], h))])
    return out


def generate_llama(directory: Path, geometry: dict = LLAMA, max_shard_bytes: float = MAX_SHARD_BYTES,
                   dtype: str = "float32") -> dict:
    """Write a sharded LLaMA-like safetensors checkpoint of random N(0, 0.02) weights (``dtype``: a torch
    dtype name, e.g. ``"bfloat16"``; drawn in fp32, the same draws for every dtype), one shard in memory
    at a time. Returns its geometry, sizes (bytes as stored), parameter counts and largest tensors."""
    import math

    import torch
    from safetensors.torch import save_file

    tensors = llama_tensors(geometry)
    store = getattr(torch, dtype)
    itemsize = torch.empty(0, dtype=store).element_size()
    shards, cur, size = [], [], 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * itemsize
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes
    shards.append(cur)
    gen = torch.Generator().manual_seed(0)
    weight_map, total, shard_bytes = {}, 0, []
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        data = {}
        for name, shape in shard:
            if len(shape) == 1:
                data[name] = torch.ones(shape, dtype=store)
            else:
                data[name] = torch.empty(shape).normal_(0.0, 0.02, generator=gen).to(store)
        save_file(data, str(directory / fname), metadata={"format": "pt"})
        for name, t in data.items():
            weight_map[name] = fname
            total += t.numel() * itemsize
        shard_bytes.append((directory / fname).stat().st_size)
        del data
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    h = geometry["hidden"]
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": geometry["ffn"], "num_attention_heads": geometry["heads"],
        "num_key_value_heads": geometry["kv_heads"], "num_hidden_layers": geometry["layers"],
        "vocab_size": geometry["vocab"], "torch_dtype": dtype,
        "tie_word_embeddings": bool(geometry.get("tie"))}, indent=2))
    sizes = {name: math.prod(shape) * itemsize for name, shape in tensors if len(shape) == 2}
    analysed = {n: s for n, s in sizes.items() if "layers." in n}
    largest_file = max(sizes, key=sizes.get)
    largest_analysed = max(analysed, key=analysed.get)
    return dict(geometry=geometry, dtype=dtype, n_shards=len(shards), shard_bytes=shard_bytes, total_bytes=total,
                parameters=sum(math.prod(shape) for _, shape in tensors),
                block_parameters=sum(s // itemsize for s in analysed.values()), n_block_matrices=len(analysed),
                largest_tensor=largest_file, largest_tensor_bytes=sizes[largest_file],
                largest_analysed_tensor=largest_analysed, largest_analysed_bytes=analysed[largest_analysed])


def set_header_length(path: Path, pickle_like: bool) -> bool:
    """Rewrite a safetensors header's space padding so that its length's first byte is 0x80
    (``pickle_like``) or is not. Streams the data; returns whether the file changed."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        if (n % 256 == 0x80) == pickle_like:
            return False
        body = fh.read(n).rstrip(b" ")
        length = (len(body) + 7) // 8 * 8
        while (length % 256 == 0x80) != pickle_like:
            length += 8
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", length) + body + b" " * (length - len(body)))
            shutil.copyfileobj(fh, out, 16 << 20)
    os.replace(tmp, path)
    return True


def sniff_shards(directory: Path) -> dict:
    from topoprune.graph.loading import _sniff, open_checkpoint

    formats = {p.name: _sniff(p) for p in sorted(directory.glob("*.safetensors"))}
    ckpt = open_checkpoint(directory)
    cls = type(ckpt).__name__
    ckpt.close()
    del ckpt
    return dict(formats=formats, checkpoint_class=cls)


def rss_child(path: str, n_jobs: int, modularity: bool, scheduler: str | None = None) -> None:
    """Runs in the measured subprocess: analyse ``path`` (density 0.1, power-law fits, Leiden
    modularity of every matrix when ``modularity``; on the Dask cluster ``scheduler`` when given),
    then print one JSON line: the peaks of this process (``RUSAGE_SELF``) and of its largest worker
    (``RUSAGE_CHILDREN``: pool workers; and, sampled with psutil when it is installed, the largest
    descendant, which covers a local Dask cluster's workers too), and the analysis's ``timing``
    (each matrix with its role and shape)."""
    import resource
    import threading

    t_import = time.perf_counter()
    import topoprune

    t_import = time.perf_counter() - t_import
    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = dict(total=0, anon=0, file=0, max_anon=0, max_file=0, descendant=0)
    stop = threading.Event()
    try:
        import psutil

        me = psutil.Process()
    except ImportError:
        me = None

    def sample():
        tick = 0
        while not stop.is_set():
            tick += 1
            if me is not None and tick % 5 == 0:  # every ~0.1 s: the largest descendant (workers)
                for child in me.children(recursive=True):
                    try:
                        peak["descendant"] = max(peak["descendant"], child.memory_info().rss)
                    except psutil.Error:
                        pass
            anon = file = 0
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        anon = int(line.split()[1]) * 1024
                    elif line.startswith("RssFile:"):
                        file = int(line.split()[1]) * 1024
            if anon + file > peak["total"]:
                peak.update(total=anon + file, anon=anon, file=file)
            peak["max_anon"] = max(peak["max_anon"], anon)
            peak["max_file"] = max(peak["max_file"], file)
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    df = topoprune.analyze(path, density=0.1, fits=True, matrix_modularity=modularity, n_jobs=n_jobs,
                           scheduler=scheduler)
    wall = time.perf_counter() - t0
    stop.set()
    shape = {r.name: dict(role=r.role, n_out=int(r.n_out), n_in=int(r.n_in)) for r in df.itertuples()}
    timing = df.attrs["timing"]
    th.join()
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(json.dumps(dict(
        n_jobs=n_jobs, modularity=modularity, n_matrices=len(df), statuses=df["status"].value_counts().to_dict(),
        wall_s=wall, import_s=t_import, rss_after_import=after_import,
        maxrss_self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        maxrss_children=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, vm_hwm=hwm,
        sampled_peak_total=peak["total"], sampled_peak_anon=peak["anon"], sampled_peak_file=peak["file"],
        sampled_max_anon=peak["max_anon"], sampled_max_file=peak["max_file"],
        sampled_peak_descendant=peak["descendant"] if me is not None else None, scheduler=scheduler,
        timing=dict(timing, matrices=[dict(m, **shape[m["name"]]) for m in timing["matrices"]]),
    )))
