"""Dominating-set head pruning on MiniLM: when it fires, which layers lose heads, what it costs.

NeuroPrune's ELIM_REDUNDANT (Dhurandhar et al. 2024, arXiv 2404.01306, Sec. 3) joins two heads of a
layer when their parameters ``[Q_h, K_h, V_h]`` differ by at most theta in every entry, and replaces
each head whose closed neighbourhood another head's strictly contains (its W_O slice is folded into
the replacer's). At the paper's theta = 0.15 no two heads of all-MiniLM-L6-v2 are joined. This
script sweeps theta on

* the pretrained MiniLM (the sentence-embedding checkpoint): heads removed per layer;
* MiniLM fine-tuned on the sentiment tweets (the dense run of ``bench_distill.py``, trained here
  if it is missing): heads removed per layer and the test accuracy right after removal (no
  retraining), next to removing **the same number of heads in every layer** by two simple
  choices -- lowest weight norm ``||[Q_h; K_h; V_h]||_F * ||W_O[:, h]||_F`` (zeroed, not folded)
  and seeded random (mean of three seeds) -- so that the dominating-set choice is compared with
  something at equal cost; and the dominating set's heads zeroed without folding their W_O slices
  into the replacers (the choice alone, without the paper's repair).

Results: ``analysis/results/bench_heads.json``; figure ``figures/heads.{png,svg}``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis.figsave import pyplot, save_figure  # noqa: E402
from analysis.fingerprint import code_fingerprint  # noqa: E402
from analysis.harness import markdown_table  # noqa: E402
from topoprune.io import atomic_path  # noqa: E402

RESULTS = ROOT / "analysis" / "results" / "bench_heads.json"
THETAS = (0.15, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
SEEDS = (0, 1, 2)


def ds_decisions(model, theta: float) -> list:
    """ELIM_REDUNDANT's decision for every attention layer (weights untouched)."""
    from topoprune.graph.binding import Binding
    from topoprune.train.heads import layer_tensors, prune_layer_heads

    b = Binding(model)
    out = []
    for la in b.attention:
        (q, k, v, o), biases = layer_tensors(b, la)
        out.append(prune_layer_heads(q, k, v, o, n_heads=la.n_heads, head_dim=la.head_dim, theta=theta,
                                     n_kv_heads=la.n_kv_heads, biases=biases, layer=la.key, block=la.q.block))
    return out


def apply_ds(model, decisions) -> None:
    """Fold and zero the heads of ``decisions`` in place."""
    from topoprune.graph.binding import Binding
    from topoprune.train.heads import apply_head_mask, layer_tensors

    b = Binding(model)
    for la, d in zip(b.attention, decisions):
        if d.replaced_by:
            (q, k, v, o), biases = layer_tensors(b, la)
            apply_head_mask(q, k, v, o, d, head_dim=la.head_dim, n_kv_heads=la.n_kv_heads, biases=biases)
            for s, new in zip((la.q, la.k, la.v, la.o), (q, k, v, o)):
                b.write(s, new)
            for s, bias in zip(la.qkv, biases):
                if bias is not None:
                    b.write_bias(s, bias)


def head_norms(model) -> list[np.ndarray]:
    """Per layer: ``||[Q_h; K_h; V_h]||_F * ||W_O[:, h]||_F`` of every head."""
    from topoprune.graph.binding import Binding

    b = Binding(model)
    out = []
    for la in b.attention:
        hd, n = la.head_dim, la.n_heads
        qkv = torch.cat([b.weight(s).detach().reshape(n, hd, -1) for s in (la.q, la.k, la.v)], 1)  # [H, 3 hd, d]
        o = b.weight(la.o).detach().reshape(-1, n, hd)  # [d, H, hd]
        out.append((qkv.flatten(1).norm(dim=1) * o.transpose(0, 1).flatten(1).norm(dim=1)).numpy())
    return out


def zero_heads(model, chosen: list[list[int]]) -> None:
    """Zero the Q/K/V rows, biases and W_O columns of ``chosen[layer]`` heads in place."""
    from topoprune.graph.binding import Binding

    b = Binding(model)
    with torch.no_grad():
        for la, heads in zip(b.attention, chosen):
            for s in (*la.qkv, la.o):
                w = b.weight(s).detach().clone()
                bias = b.bias(s)
                for h in heads:
                    sl = slice(h * la.head_dim, (h + 1) * la.head_dim)
                    if s is la.o:
                        w[:, sl] = 0
                    else:
                        w[sl] = 0
                        if bias is not None:
                            bias = bias.detach().clone()
                            bias[sl] = 0
                b.write(s, w)
                if bias is not None and s is not la.o:
                    b.write_bias(s, bias)


def accuracy(model, data, batch: int = 100) -> float:
    model.eval()
    right = 0
    with torch.inference_mode():
        for i in range(0, len(data.eval), batch):
            rows = [data.eval[j] for j in range(i, min(i + batch, len(data.eval)))]
            inputs = data.collator(rows)
            labels = inputs.pop("labels")
            right += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return right / len(data.eval)


def sweep(args) -> dict:
    from topoprune.models import build_model, load_model, load_tokenizer
    from topoprune.train.data import load_task

    pretrained, _ = load_model("minilm", "classification", num_labels=2)
    counts_pre = {str(t): [len(d.replaced_by) for d in ds_decisions(pretrained, t)] for t in THETAS}
    model_dir = args.dense / "model"
    tok = load_tokenizer(str(model_dir))
    data = load_task("tweets", tok, max_length=64, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)

    def fresh():
        return build_model(str(model_dir), "classification", tok, num_labels=2).eval()

    base = fresh()
    dense_acc = accuracy(base, data)
    norms = head_norms(base)
    rows = []
    for theta in THETAS:
        decisions = ds_decisions(base, theta)
        per_layer = [len(d.replaced_by) for d in decisions]
        row = {"theta": theta, "removed_per_layer": per_layer, "removed": sum(per_layer),
               "pairs": [{str(h): r for h, r in d.replaced_by.items()} for d in decisions]}
        if sum(per_layer):
            m = fresh()
            apply_ds(m, decisions)
            row["dominating_set"] = accuracy(m, data)
            m = fresh()
            zero_heads(m, [sorted(d.replaced_by) for d in decisions])
            row["dominating_set_unfolded"] = accuracy(m, data)
            m = fresh()
            zero_heads(m, [list(np.argsort(n, kind="stable")[:c]) for n, c in zip(norms, per_layer)])
            row["weight_norm"] = accuracy(m, data)
            accs = []
            for seed in SEEDS:
                rng = np.random.default_rng(seed)
                m = fresh()
                zero_heads(m, [list(rng.permutation(len(n))[:c]) for n, c in zip(norms, per_layer)])
                accs.append(accuracy(m, data))
            row["random"], row["random_each"] = float(np.mean(accs)), accs
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "pairs"}), flush=True)
    return {"dense_accuracy": dense_acc, "pretrained_removed_per_layer": counts_pre, "fine_tuned": rows}


def table(res: dict) -> list[str]:
    n = res["settings"]["n_eval"]
    rows = []
    for r in res["fine_tuned"]:
        pre = res["pretrained_removed_per_layer"][str(r["theta"])]
        cells = [f"{r['theta']:g}", f"{sum(pre)} ({' '.join(map(str, pre))})",
                 f"{r['removed']} ({' '.join(map(str, r['removed_per_layer']))})"]
        cells += [f"{r[k]:.3f}" if k in r else "–"
                  for k in ("dominating_set", "dominating_set_unfolded", "weight_norm", "random")]
        rows.append(cells)
    return [f"fine-tuned dense accuracy {res['dense_accuracy']:.3f} on {n} test tweets", "", *markdown_table(
        ["theta", "heads removed, pretrained (per layer)", "heads removed, fine-tuned (per layer)",
         "accuracy: dominating set", "same heads, not folded", "weight norm", "random (3 seeds)"], rows)]


def plot(res: dict) -> None:
    plt = pyplot()

    rows = [r for r in res["fine_tuned"] if r["removed"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = [r["removed"] for r in rows]
    for key, label, marker in (("dominating_set", "dominating set (folded)", "o"),
                               ("dominating_set_unfolded", "dominating set, not folded", "D"),
                               ("weight_norm", "lowest weight norm", "s"), ("random", "random (mean of 3)", "^")):
        if all(key in r for r in rows):
            ax.plot(x, [100 * r[key] for r in rows], marker=marker, label=label)
    ax.axhline(100 * res["dense_accuracy"], color="0.5", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("heads removed (of 72), same number per layer for every choice")
    ax.set_ylabel("test accuracy (%), no retraining")
    ax.set_title("MiniLM fine-tuned on sentiment tweets", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, "heads")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", type=Path, default=Path.home() / ".cache" / "topoprune" / "bench-distill"
                    / "dense-n0.00-h0.00", help="a finished dense `topoprune train` run on the tweets")
    ap.add_argument("--n-train", type=int, default=2000, help="the dense run's training examples (same split)")
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.plot_only:
        res = json.loads(args.out.read_text())
    else:
        if not (args.dense / "topoprune.json").is_file():
            from analysis.compaction_runs import train_one

            ns = argparse.Namespace(epochs=3.0, lr=1e-4, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
            train_one("dense", 0.0, 0.0, ns, args.dense.parent)
        torch.set_num_threads(os.cpu_count() or 1)
        res = sweep(args)
        dense_cfg = json.loads((args.dense / "topoprune.json").read_text())["config"]
        res["settings"] = {"n_eval": args.n_eval, "n_train": args.n_train, "seed": args.seed, "dense": dense_cfg,
                           "code": code_fingerprint("train", "graph", "models.py", measured=(
                               THETAS, SEEDS, ds_decisions, apply_ds, head_norms, zero_heads, accuracy, sweep))}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(res, indent=1))
    print("\n".join(table(res)))
    plot(res)


if __name__ == "__main__":
    main()
