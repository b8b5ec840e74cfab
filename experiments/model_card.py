"""Evaluate a bundled checkpoint and write its model card (README.md + validation_curve.png).

    python -m experiments.model_card --checkpoint focuslib/checkpoints/tiny-sdar \
        --run-dir outputs/train/tiny_sdar --command "python -m experiments.train train=tiny_sdar ..."

What it measures (`--task mix`, the 8-block models, or `--task long_mix`, the regime model):
* test accuracy per task on `--n-test` problems of load_task(task, seed="test") (mix: equal
  task weights), under low-confidence decoding (one token per step: LowConfidence,
  steps = gen_length) and threshold decoding (Threshold(0.9)); tokens committed per step
  per task (the decoder's DecodeStats.tokens_per_step, <eos> filler included);
* a validation curve: the training log's one-shot accuracy, plus threshold-0.9 decoder
  accuracy of every snapshot in run_dir/snapshots on `--n-val` validation problems (or,
  when the log has them and `--decode-snapshots` is not given, the decoder accuracies the
  trainer measured itself: `val_decode`);
* `--regime`: the regime metrics of focuslib.regime under Threshold(0.9) (how much a block
  decodes per step, forced commits, the oracle's row-layer saving) and the correct-prefix rate.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

EVAL_WEIGHTS = {"spell_backward": 0.25, "number_sorting": 0.25, "chain_sum": 0.25, "basic_arithmetic": 0.25}

# What the card says about each training/evaluation mix.
TASK_NOTES = {
    "mix": ("answers are at most 9 characters, followed by `<eos>` filler",
            "chain_sum 2-3 single-digit terms; number_sorting 3-5 values in 0..9; spell_backward words of 3-8 "
            "letters; basic_arithmetic two 2-digit operands, `+`"),
    "long_mix": ("answers are 24-31 characters filling most of one 32-token block (walks of 24-28 symbols that "
                 "never repeat one, through 28 listed pairs; repeats of 24-31 characters), then `<eos>`",
                 "stage 1 (train=walk_lookup): wrapping walks over 3-6 of a-p; stage 2 (train=tiny_sdar_b32): walks "
                 "through 3-24 listed symbols of a-z0-9, 2-24 long, and repeats of 4-31 characters; stage 3 "
                 "(train=tiny_sdar_b32_long, shown here): walks through 16-32 listed symbols, 10-31 long; its own "
                 "validation decoded walks through 32 listed symbols, which it does not learn (docs/design.md), so "
                 "the decoder curve below is its snapshots on the evaluation mix's validation split; evaluation: "
                 "28 listed symbols, walks of 24-28, repeats of 24-31"),
}


def eval_task(name: str, n: int, seed: str) -> Any:
    """The evaluation problems of a card: the equal-weight mix, or any other task with its defaults."""
    from focuslib.tasks import load_task

    return load_task(name, n, seed=seed, **({"weights": EVAL_WEIGHTS} if name == "mix" else {}))


def decode_task(model: Any, tok: Any, task: Any, policy: str, gen_length: int, batch_size: int) -> dict[str, dict]:
    """Per sub-task {accuracy, tokens_per_step, n} for one policy ("low_confidence" | "threshold")."""
    from collections import Counter

    from focuslib import DiffusionDecoder, evaluate
    from focuslib.policies.unmasking import LowConfidence, Threshold

    unmasking = LowConfidence() if policy == "low_confidence" else Threshold(0.9)
    steps = gen_length if policy == "low_confidence" else None
    result = evaluate(DiffusionDecoder(model, unmasking, tokenizer=tok), task, gen_length=gen_length, steps=steps,
                      batch_size=batch_size, progress=False)
    n = Counter(r["task"] for r in result.records)
    return {name: {"accuracy": acc, "tokens_per_step": result.tokens_per_step_by_task[name], "n": n[name]}
            for name, acc in result.per_task.items()}


def summarize(per_task: dict[str, dict]) -> dict[str, float]:
    accs = [v["accuracy"] for v in per_task.values()]
    tps = [v["tokens_per_step"] for v in per_task.values()]
    return {"mean_accuracy": sum(accs) / len(accs), "min_accuracy": min(accs), "mean_tokens_per_step": sum(tps) / len(tps)}


def snapshot_curve(run_dir: Path, gen_length: int, n_val: int, batch_size: int, task_name: str = "mix") -> list[dict]:
    """Threshold-0.9 validation accuracy of every loadable snapshot (sorted by step)."""
    from focuslib.loading import load_model

    task = eval_task(task_name, n_val, "validation")
    points = []
    for snap in sorted((run_dir / "snapshots").glob("step*")):
        model, tok = load_model(snap)
        info = json.loads((snap / "config.json").read_text()).get("focuslib_training", {})
        res = decode_task(model, tok, task, "threshold", gen_length, batch_size)
        points.append({"step": info.get("step"), "elapsed_min": info.get("elapsed_min"),
                       **{k: v["accuracy"] for k, v in res.items()}, **summarize(res)})
        print("snapshot", snap.name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in points[-1].items()}), flush=True)
    return points


def one_shot_curve(run_dir: Path) -> list[dict]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in records if r.get("event") == "val"]


def logged_decode_curve(one_shot: list[dict]) -> list[dict]:
    """The trainer's own Threshold(0.9) validation decodes (val_decode), in the snapshot-curve format."""
    points = []
    for r in one_shot:
        tasks = {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("decode_accuracy/")}
        if tasks:
            points.append({"step": r["step"], "elapsed_min": round(r["elapsed_min"], 1), **tasks,
                           "mean_accuracy": sum(tasks.values()) / len(tasks),
                           "mean_tokens_per_step": r.get("decode_tokens_per_step", float("nan"))})
    return points


def regime_section(model: Any, tok: Any, task: Any, gen_length: int, batch_size: int) -> str:
    """Markdown: regime metrics and correct-prefix rate under Threshold(0.9) on the test problems.

    Decoded twice: with the exact block cache (every row of the current block recomputed at
    each step) and with the delayed cache (FOCUS's base: a row's K/V freeze once it and its
    right neighbour are unmasked), since the oracle's saving is a share of what the cache
    leaves to compute.
    """
    from focuslib import DiffusionDecoder, evaluate
    from focuslib.tasks import prefix_match
    from focuslib.policies.unmasking import Threshold

    results = {cache: evaluate(DiffusionDecoder(model, Threshold(0.9), tokenizer=tok, cache=cache), task,
                               gen_length=gen_length, batch_size=batch_size, progress=False, regime=True)
               for cache in ("block", "delayed")}
    block, delayed = results["block"], results["delayed"]
    r = block.regime
    prefix = sum(prefix_match(x["prediction"], x["answer"]) for x in block.records) / len(block.records)
    lines = ["| statistic (Threshold(0.9), exact block cache unless noted) | value |", "|---|---|",
             f"| mean fraction of a block's masked rows committed at its first step | {r.committed_fraction_first:.3f} |",
             f"| ... at later steps | {r.committed_fraction_later:.3f} |",
             f"| share of commits that are forced (top-1 < 0.9) | {r.forced_share:.1%} |",
             f"| row-layers an oracle eviction could save (dense trace replay), block cache | {r.oracle_saving:.1%} |",
             f"| ... delayed cache (FOCUS's base) | {delayed.regime.oracle_saving:.1%} |",
             f"| correct-prefix rate | {prefix:.1%} |", f"| exact match | {block.accuracy:.1%} |",
             f"| exact match, delayed cache | {delayed.accuracy:.1%} |"]
    for name, stats in sorted(block.regime_by_task.items()):
        lines.append(f"| {name}: committed fraction first / later, forced share | "
                     f"{stats.committed_fraction_first:.3f} / {stats.committed_fraction_later:.3f}, "
                     f"{stats.forced_share:.1%} |")
    return "\n".join(lines)


def plot_curves(path: Path, one_shot: list[dict], snaps: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    tasks = sorted(k.split("/")[1] for k in one_shot[-1] if k.startswith("one_shot_accuracy/"))
    for t in tasks:
        axes[0].plot([r["elapsed_min"] for r in one_shot], [r[f"one_shot_accuracy/{t}"] for r in one_shot], label=t)
        if snaps:
            axes[1].plot([p["elapsed_min"] for p in snaps], [p.get(t, float("nan")) for p in snaps], marker="o", ms=3, label=t)
    axes[0].set_title("one-shot argmax (training log)", fontsize=9)
    axes[1].set_title("decoder, Threshold(0.9), validation", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation exact match")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(per_policy: dict[str, dict[str, dict]]) -> str:
    tasks = sorted(next(iter(per_policy.values())))
    lines = ["| task | n | low-confidence acc | threshold 0.9 acc | threshold tokens/step | low-confidence tokens/step |",
             "|---|---|---|---|---|---|"]
    lc, th = per_policy["low_confidence"], per_policy["threshold"]
    for t in tasks:
        lines.append(f"| {t} | {lc[t]['n']} | {lc[t]['accuracy']:.1%} | {th[t]['accuracy']:.1%} | "
                     f"{th[t]['tokens_per_step']:.2f} | {lc[t]['tokens_per_step']:.2f} |")
    s_lc, s_th = summarize(lc), summarize(th)
    lines.append(f"| **mean over tasks** | | **{s_lc['mean_accuracy']:.1%}** | **{s_th['mean_accuracy']:.1%}** | "
                 f"**{s_th['mean_tokens_per_step']:.2f}** | {s_lc['mean_tokens_per_step']:.2f} |")
    return "\n".join(lines)


def _curve_table(one_shot: list[dict], snaps: list[dict]) -> str:
    tasks = sorted(k.split("/")[1] for k in one_shot[-1] if k.startswith("one_shot_accuracy/"))
    head = "| minutes | step | " + " | ".join(tasks) + " | mean |"
    lines = ["One-shot argmax accuracy on the validation problems (training log):", "",
             head, "|" + "---|" * (len(tasks) + 3)]
    for r in one_shot:
        vals = " | ".join(f"{r[f'one_shot_accuracy/{t}']:.2f}" for t in tasks)
        lines.append(f"| {r['elapsed_min']:.1f} | {r['step']} | {vals} | {r['one_shot_accuracy']:.2f} |")
    if snaps:
        lines += ["", "Decoder accuracy (Threshold 0.9) on validation problems during training:", "",
                  head.replace("| mean |", "| mean | tokens/step |"), "|" + "---|" * (len(tasks) + 4)]
        for p in snaps:
            vals = " | ".join(f"{p.get(t, float('nan')):.2f}" for t in tasks)
            lines.append(f"| {p['elapsed_min']} | {p['step']} | {vals} | {p['mean_accuracy']:.2f} | "
                         f"{p['mean_tokens_per_step']:.2f} |")
    return "\n".join(lines)


def write_card(ckpt: Path, run_dir: Path, results: dict, snaps: list[dict], commands: list[str], notes: str,
               task_name: str = "mix", regime: str = "") -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_cfg = next((r["config"] for r in records if r.get("event") == "start"), {})  # after an init_from line
    from focuslib.loading import load_model

    model, _ = load_model(ckpt)
    mc = model.cfg
    one_shot = one_shot_curve(run_dir)
    plot_curves(ckpt / "validation_curve.png", one_shot, snaps, f"{ckpt.name}: validation exact match")
    size_mb = (ckpt / "model.safetensors").stat().st_size / 1e6
    info = cfg.get("focuslib_training", {})
    rule = (f"block diffusion (SDAR layout): block-causal, block {mc.block_size}, QK-norm" if mc.block_diffusion
            else "full bidirectional attention (LLaDA layout)")
    text = f"""# {ckpt.name}

A small masked-diffusion language model trained by focuslib on CPU so that every decoding
feature can be exercised without a GPU or a model hub. It is stored in the **real
`{cfg['model_type']}` checkpoint format** (config.json, model.safetensors with the family's key
names, tokenizer files) and loads through the same code as the 8B checkpoints:

```python
from focuslib.loading import load_model
model, tokenizer = load_model("{ckpt.name}")          # bundled name or path
```

Decode with `gen_length={info.get('gen_length', 16)}` (the answer region it was trained on;
{TASK_NOTES[task_name][0]}).

## Architecture

| field | value |
|---|---|
| family | `{mc.family}` ({rule}) |
| layers / width | {mc.n_layers} / {mc.dim} |
| heads | {mc.n_heads} query heads of {mc.head_dim}, {mc.n_kv_heads} KV heads (GQA) |
| MLP | SwiGLU, intermediate {mc.intermediate_size} |
| RoPE theta / max positions | {mc.rope_theta:g} / {mc.max_positions} |
| vocab | {mc.vocab_size} ids (character level: `<pad>`=0, `<eos>`=1, `<mask>`=2, `<unk>`=3, then `focuslib.tasks.CHARSET`) |
| answer-offset embeddings | {mc.answer_offset_embeddings} (focuslib extension, config key `answer_offset_embeddings`; real checkpoints lack it) |
| parameters | {model.num_parameters:,} |
| model.safetensors | {size_mb:.1f} MB (bf16) |

## Training

Masked-diffusion SFT (`focuslib.training`): one example per row, `prompt + answer + <eos>`
then `<eos>` filler up to {info.get('gen_length', 16)} answer-region tokens; the prompt is never masked;
each answer-region token is masked with probability t, stratified over the batch
(t_i = eps + (1 - eps)(i + u)/B); loss = cross-entropy on masked tokens / t, divided by the
answer-region length. {"Block diffusion: input [clean ; noisy], a noisy token of block k sees the clean blocks < k and its own noisy block." if mc.block_diffusion else "Full attention over the noisy sequence."}
AdamW (lr {train_cfg.get('lr')}, betas {train_cfg.get('betas')}, wd {train_cfg.get('weight_decay')}), warmup {train_cfg.get('warmup_steps')} steps + cosine over the
time budget, batch {train_cfg.get('batch_size')}, grad clip {train_cfg.get('grad_clip')}, bf16 autocast, {train_cfg.get('threads')} CPU thread.

* data: `load_task("{train_cfg.get('task')}", {train_cfg.get('n_train')}, seed="train", **{train_cfg.get('task_options')})`
  ({TASK_NOTES[task_name][1]});
  validation `seed="validation"` ({train_cfg.get('n_val')} problems); splits are disjoint by prompt hash.
* steps: {info.get('step')}; wall time: {info.get('elapsed_min')} min (validation and checkpoints included),
  on a 2-core CPU shared with other jobs.
* commands (run from the repository root):

```bash
{chr(10).join(commands)}
```

Partly trained snapshots are kept outside the package in the run directory
`{run_dir}/snapshots/` for policy studies.

## Validation curve

![validation curve](validation_curve.png)

{_curve_table(one_shot, snaps)}

## Test results

{results['n_test']} problems of `{results['task_call']}`, `DiffusionDecoder`, gen_length {results['gen_length']}, greedy.
Low-confidence = `LowConfidence()`, steps = gen_length (one token per step);
threshold = `Threshold(0.9)` (every masked position with confidence >= 0.9, at least one).
Tokens per step count every committed token, `<eos>` filler included.

{_table(results['policies'])}

{("## Regime" + chr(10) + chr(10) + regime) if regime else ""}

{notes}
"""
    (ckpt / "README.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--command", action="append", default=[], help="training command(s) to print in the card")
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lc-batch-size", type=int, default=50, help="batch for LowConfidence decoding")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--notes", default="")
    ap.add_argument("--skip-snapshots", action="store_true")
    ap.add_argument("--task", default="mix", choices=sorted(TASK_NOTES), help="evaluation mix")
    ap.add_argument("--regime", action="store_true", help="add the regime metrics (focuslib.regime)")
    ap.add_argument("--decode-snapshots", action="store_true",
                    help="decode every snapshot on the evaluation mix's validation problems, even when the training "
                         "log holds the trainer's own validation decodes (for a run that validated on another mix)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from focuslib.loading import load_model

    ckpt, run_dir = Path(args.checkpoint), Path(args.run_dir)
    model, tok = load_model(ckpt)
    test = eval_task(args.task, args.n_test, "test")
    policies = {}
    for policy, bs in (("low_confidence", args.lc_batch_size), ("threshold", args.batch_size)):
        policies[policy] = decode_task(model, tok, test, policy, args.gen_length, bs)
        print(policy, json.dumps(policies[policy]), json.dumps(summarize(policies[policy])), flush=True)
    weights = f", weights={EVAL_WEIGHTS}" if args.task == "mix" else ""
    results = {"n_test": args.n_test, "gen_length": args.gen_length, "policies": policies,
               "task_call": f'load_task("{args.task}", {args.n_test}, seed="test"{weights})',
               "summary": {k: summarize(v) for k, v in policies.items()}}
    snaps = [] if args.decode_snapshots else logged_decode_curve(one_shot_curve(run_dir))
    if not snaps and not args.skip_snapshots:
        snaps = snapshot_curve(run_dir, args.gen_length, args.n_val, args.batch_size, args.task)
    regime = regime_section(model, tok, test, args.gen_length, args.batch_size) if args.regime else ""
    (run_dir / "eval_results.json").write_text(json.dumps({**results, "snapshots": snaps}, indent=2))
    write_card(ckpt, run_dir, results, snaps, args.command, args.notes, args.task, regime)
    print("wrote", ckpt / "README.md", os.path.getsize(ckpt / "README.md"), "bytes")


if __name__ == "__main__":
    main()
