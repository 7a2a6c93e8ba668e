"""Speed as a user sees it: namegen's train.py and sample.py against the notebook's own loop.

    python bench/speed.py                  # small, medium, large; rewrites bench/RESULTS.md on a quiet machine
    python bench/speed.py --sizes small    # one size
    python bench/speed.py --quick          # smoke run: small, 20 batches; never writes RESULTS.md

Every figure comes from a fresh process with the user's defaults (all cores, torch's
default threads; OMP_NUM_THREADS / MKL_NUM_THREADS are removed from the children's
environment), per size:

- namegen: ``python train.py --model SIZE --max-epochs 2 --data DATA --out $TMP/SIZE-cpu``
  (W&B offline, the default logger, with WANDB_DIR in $TMP; on a machine with a GPU the
  cpu row adds --accelerator cpu, since train.py's default would pick the GPU). The epoch a
  user waits for is the time between the run's two epoch lines, as they arrive on its
  stdout: the second epoch's training, its validation of the weight average, and the first
  epoch's checkpoints (written after its line). The second epoch's training alone
  (time/train_s) and its tokens/s come from the metrics.csv train.py writes.
- the notebook: ``python bench/notebook_epoch.py --size SIZE --data DATA``: its data
  preparation, DataLoader, model, optimizer (batch 64, what its code ran) and epoch loop,
  transcribed in tests/notebook_transcript.py, timed with perf_counter around the loop
  (its per-epoch validation pass is not counted: the comparison favours the notebook).
  Both sides train on the same names (the same 80/20 split); real tokens are predicted
  characters that are not padding.
- the ratio notebook epoch s / namegen epoch s as a user waits (targets: small >= 2.5x,
  medium >= 3x, large >= 5x). The two run alternately, PAIRS[size] times (small and medium 3,
  large 1), and each figure is the median of its runs: a process's epoch moves by a third with
  the VM's minute, more than the margins the targets are judged by.
- the matmul floor (large): ``python bench/matmul_floor.py --size large --updates --step`` times only
  the products of large's training epoch in bf16; target: large's training epoch within 1.5x of it.
  In the same process it times the recipe's per-step clipping, AdamW and weight average alone, as
  many steps: a share of the floor that the 1.5x allowance has to hold besides everything else; and
  the whole training step with no Trainer around it, alternating with the products: how far the
  model's and the recipe's own work is from the floor, whatever the Trainer costs.
- sampling: ``python sample.py --ckpt $TMP/small-cpu/best.ckpt -n 200000 > /dev/null``
  timed (target >= 50,000 names/s for the whole process), and ``-n 1`` timed to show the
  start-up it contains: each 5 times, alternately, and the median of each reported (a
  process of a few seconds moves by 20% with the VM's minute).

The load average is read before and after. A run whose 1-minute load was above
--max-load before it started, or above cores + --max-load after it, prints its
figures marked NOT RECORDED and leaves RESULTS.md alone; so does --quick. With a CUDA
GPU, everything runs again on it (train.py --accelerator gpu, the notebook on cuda,
sample.py --device cuda) and is reported separately; that path has not been run on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SIZES = ("small", "medium", "large")
BEGIN = "<!-- bench/speed.py: measured figures begin (rewritten by each recorded run; edit outside the markers) -->"
END = "<!-- bench/speed.py: measured figures end -->"
EPOCH_TARGET = {"small": 2.5, "medium": 3.0, "large": 5.0}  # notebook epoch / namegen epoch as a user waits
FLOOR_TARGET, FLOOR_SIZE = 1.5, "large"  # namegen's training epoch / the bf16 matmul floor's
SAMPLE_TARGET, SAMPLE_N, SAMPLE_RUNS, QUICK_BATCHES = 50_000, 200_000, 5, 20
# notebook and namegen epochs are timed in alternating pairs, this many per size: a process's epoch moves by
# 30% with the VM's minute (small, 2026-12-08: namegen 2.1 to 3.4 s, the notebook 5.7 to 7.6 s, one after
# another); large's pair takes four minutes, so it runs once
PAIRS = {"small": 3, "medium": 3, "large": 1}


def child_env(tmp: Path) -> dict:
    """The caller's environment, minus thread pinning; W&B offline (train.py's default), files in tmp."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return env | {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp), "WANDB_SILENT": "true"}


def timed(cmd: list[str], env: dict, commands: list[str], stdout=subprocess.PIPE) -> tuple[float, str]:
    """Run cmd from tmp (env's WANDB_DIR); seconds of the whole process and its stdout. Records the command."""
    commands.append(shlex.join(cmd) + (" > /dev/null" if stdout == subprocess.DEVNULL else ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=env["WANDB_DIR"], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {commands[-1]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout or ""


def timed_lines(cmd: list[str], env: dict, commands: list[str]) -> tuple[float, list[tuple[float, str]]]:
    """Run cmd from tmp; seconds of the whole process, and each stdout line with the second it arrived."""
    commands.append(shlex.join(cmd))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, cwd=env["WANDB_DIR"], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                bufsize=1)
        lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
        proc.wait()
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"failed ({proc.returncode}): {commands[-1]}\n{err.read()[-3000:]}")
    return seconds, lines


def read_epochs(path: Path) -> list[dict]:
    """train.py's metrics.csv, one dict per epoch (the rows that carry the run clock's columns)."""
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return [row for row in rows if "time/train_s" in row]


def run_namegen(size: str, device: str, args, env: dict, commands: list, run: int = 0) -> dict:
    out = Path(env["WANDB_DIR"]) / (f"{size}-{device}" + (f"-{run + 1}" if run else ""))  # a fresh run each time
    cmd = [PY, str(ROOT / "train.py"), "--model", size, "--max-epochs", "2", "--data", args.data, "--out", str(out)]
    if torch.cuda.is_available():  # train.py's default (auto) would pick the GPU for the cpu row
        cmd += ["--accelerator", device]
    if args.quick:
        cmd += ["--limit-train-batches", str(QUICK_BATCHES)]
    process_s, lines = timed_lines(cmd, env, commands)
    epoch_lines = [t for t, line in lines if re.match(r"epoch \d+/\d+: ", line)]
    first, second = read_epochs(out / "metrics.csv")[:2]
    train_s = second["time/train_s"] - first["time/train_s"]
    config = next((re.match(r"^config(?: \(.*?\))?: (\{.*\})$", line) for _, line in lines
                   if line.startswith("config")), None)
    return {"waited_s": epoch_lines[1] - epoch_lines[0], "epoch_s": train_s, "process_s": process_s,
            "real_tokens": int(second["time/train_tokens"] - first["time/train_tokens"]),
            "tokens_per_s": second["train/tokens_per_s"],
            "batch_size": json.loads(config.group(1))["batch_size"] if config else "?", "ckpt": out / "best.ckpt"}


def run_floor(size: str, args, env: dict, commands: list) -> dict:
    cmd = [PY, str(ROOT / "bench" / "matmul_floor.py"), "--size", size, "--data", args.data, "--updates", "--step"]
    if args.quick:
        cmd += ["--limit-batches", str(QUICK_BATCHES)]
    process_s, stdout = timed(cmd, env, commands)
    return json.loads(stdout.strip().splitlines()[-1]) | {"process_s": process_s}


def run_notebook(size: str, device: str, args, env: dict, commands: list) -> dict:
    cmd = [PY, str(ROOT / "bench" / "notebook_epoch.py"), "--size", size, "--data", args.data,
           "--device", "cuda" if device == "gpu" else "cpu"]
    if args.notebook_batch_size:
        cmd += ["--batch-size", str(args.notebook_batch_size)]
    if args.quick:
        cmd += ["--limit-batches", str(QUICK_BATCHES)]
    process_s, stdout = timed(cmd, env, commands)
    return json.loads(stdout.strip().splitlines()[-1]) | {"process_s": process_s}


def run_sampling(ckpt: Path, n: int, device: str, env: dict, commands: list, runs: int = SAMPLE_RUNS) -> dict:
    """``sample.py -n 1`` and ``-n n``, alternately, ``runs`` times each (a few seconds a process, so one run
    is at the mercy of the VM's minute): the median of each, with the fastest and slowest."""
    base = [PY, str(ROOT / "sample.py"), "--ckpt", str(ckpt)] + (["--device", "cuda"] if device == "gpu" else [])
    startups, walls = [], []
    for i in range(runs):
        shown = commands if i == 0 else []  # the command list names each command once
        startups.append(timed(base + ["-n", "1"], env, shown, stdout=subprocess.DEVNULL)[0])
        walls.append(timed(base + ["-n", str(n)], env, shown, stdout=subprocess.DEVNULL)[0])
    return {"n": n, "runs": runs, "wall_s": statistics.median(walls), "startup_s": statistics.median(startups),
            "wall_range": (min(walls), max(walls)), "startup_range": (min(startups), max(startups))}


def run_pairs(size: str, device: str, args, env: dict, commands: list) -> tuple[dict, dict]:
    """The notebook's epoch and namegen's, alternately, ``PAIRS[size]`` times: each figure is the median of
    its runs, and ``ratios`` holds each pair's notebook / namegen epoch as a user waits."""
    pairs = []
    for i in range(1 if args.quick else PAIRS[size]):
        shown = commands if i == 0 else []  # the command list names each command once
        pairs.append((run_notebook(size, device, args, env, shown), run_namegen(size, device, args, env, shown, i)))
    nbk, ng = (median_run([pair[k] for pair in pairs]) for k in (0, 1))
    ng["ratios"] = [a["epoch_s"] / b["waited_s"] for a, b in pairs]
    return nbk, ng


def median_run(runs: list[dict]) -> dict:
    """One run's fields, each number the median over the runs (the first run's for the rest)."""
    numbers = {k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return runs[0] | {k: statistics.median(r[k] for r in runs) for k in numbers} | {"runs": len(runs)}


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu, "date": date}


def size_table(size: str, device: str, nbk: dict, ng: dict, floor: dict | None) -> list[str]:
    ratio, target = nbk["epoch_s"] / ng["waited_s"], EPOCH_TARGET[size]
    met = "met" if ratio >= target else "**missed**"
    runs = ng["runs"]
    each = "" if runs == 1 else (f" (each pair's: {', '.join(f'{r:.2f}x' for r in ng['ratios'])})")
    lines = [
        f"### {size}, {device}",
        "",
        "One pair of runs, notebook then namegen." if runs == 1 else
        f"Medians of {runs} pairs of runs, notebook and namegen alternately.",
        "",
        "| | epoch s as a user waits | epoch s (training only) | whole process s | batch size | real tokens | tokens/s |",
        "|---|---|---|---|---|---|---|",
        f"| notebook loop | {nbk['epoch_s']:.2f} (its validation not counted) | {nbk['epoch_s']:.2f} "
        f"| {nbk['process_s']:.2f} | {nbk['batch_size']} | {nbk['real_tokens']:,} | {nbk['tokens_per_s']:,.0f} |",
        f"| namegen train.py (2 epochs) | {ng['waited_s']:.2f} | {ng['epoch_s']:.2f} | {ng['process_s']:.2f} "
        f"| {ng['batch_size']} | {ng['real_tokens']:,} | {ng['tokens_per_s']:,.0f} |",
        f"| **notebook / namegen epoch** | **{ratio:.2f}x** (target >= {target:g}x: {met}){each} "
        f"| {nbk['epoch_s'] / ng['epoch_s']:.2f}x | | | | |",
    ]
    if floor is not None:
        over = ng["epoch_s"] / floor["epoch_s"]
        lines.append(f"| {floor['dtype']} matmul floor (bench/matmul_floor.py) | | {floor['epoch_s']:.2f} "
                     f"({floor['gemms']:,} products, {floor['gflop']:,.0f} GFLOP) | {floor['process_s']:.2f} | | | |")
        lines.append(f"| **namegen training epoch / floor** | | **{over:.2f}x** (target <= {FLOOR_TARGET:g}x: "
                     f"{floor_verdict(over, ng, floor)}) | | | | |")
        if "updates_s" in floor:  # what the recipe's weight passes alone take of the floor's allowance
            lines.append(f"| the recipe's clipping, AdamW and average alone (bench/matmul_floor.py --updates) | "
                         f"| {floor['updates_s']:.2f} ({floor['updates_share']:.0%} of the floor; the target allows "
                         f"{FLOOR_TARGET - 1:.0%} for everything that is not a product) | | | | |")
        if "step_s" in floor:  # the model's and the recipe's own work, without the Trainer's
            lines.append(f"| the same training step with no Trainer, alternating with the products "
                         f"(bench/matmul_floor.py --step) | | {floor['step_s']:.2f} ({floor['step_over_floor']:.2f}x "
                         f"the floor) | | | | |")
    return lines + [""]


def floor_verdict(over: float, ng: dict, floor: dict) -> str:
    """met / missed; or, where train.py's epoch ran faster than the same step with no Trainer timed beside
    the floor (it does strictly more work), that the VM's speed moved between the two processes."""
    if over > FLOOR_TARGET:
        return "**missed**"
    if "step_s" in floor and ng["epoch_s"] < floor["step_s"]:
        return (f"**not judged**: train.py's epoch, {ng['epoch_s']:.2f} s, ran faster than the same step with no "
                f"Trainer beside the floor, {floor['step_s']:.2f} s, so the VM's speed moved between the processes; "
                f"the step beside the floor is {floor['step_over_floor']:.2f}x it")
    return "met"


def sampling_table(device: str, s: dict) -> list[str]:
    raw, net = s["n"] / s["wall_s"], s["n"] / max(s["wall_s"] - s["startup_s"], 1e-9)
    met = "met" if raw >= SAMPLE_TARGET else "**missed**"
    return [
        f"### sampling, small, {device}",
        "",
        f"| | wall s, median of {s['runs']} (fastest, slowest) | names/s |",
        "|---|---|---|",
        f"| sample.py -n {s['n']} > /dev/null | {s['wall_s']:.2f} ({s['wall_range'][0]:.2f}, {s['wall_range'][1]:.2f}) "
        f"| {raw:,.0f} (target >= {SAMPLE_TARGET:,}: {met}) |",
        f"| sample.py -n 1 (start-up) | {s['startup_s']:.2f} ({s['startup_range'][0]:.2f}, "
        f"{s['startup_range'][1]:.2f}) | |",
        f"| -n {s['n']} minus start-up (medians) | {s['wall_s'] - s['startup_s']:.2f} | {net:,.0f} |",
        "",
    ]


def render(results: dict, info: dict, load: tuple, commands: list, tmp: Path) -> str:
    lines = ["## Measured figures", ""]
    threads = next((r[0]["threads"] for (kind, _, _), r in results.items() if kind == "epoch"), "?")
    for (kind, size, device), r in results.items():
        lines += size_table(size, device, *r) if kind == "epoch" else sampling_table(device, r)
    def show(cmd):
        return cmd.replace(PY, "python").replace(str(tmp), "$TMP").replace(str(ROOT), "$REPO")

    lines += [
        "Epoch as a user waits: the time between train.py's two epoch lines (the second epoch's training, its "
        "validation, the first epoch's checkpoints); training only: its time/train_s from metrics.csv. The "
        "notebook's: perf_counter around its epoch loop, without its validation pass. Both train on the same "
        "names; namegen also predicts each name's first letter from its '.' start token (the notebook's inputs "
        "have none), so it has one more real token per name. Whole process: the command's wall time "
        "(namegen: two epochs), start-up and data included.",
        "",
        "### Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} logical cores; GPU: {info['gpu']}",
        f"- torch {info['torch']}, {threads} threads (the notebook process's default); date {info['date']}",
        f"- load average (1, 5, 15 min) before: {load[0][0]:.2f}, {load[0][1]:.2f}, {load[0][2]:.2f}; "
        f"after: {load[1][0]:.2f}, {load[1][1]:.2f}, {load[1][2]:.2f}",
        f"- bench: `{shlex.join(['python', 'bench/speed.py', *sys.argv[1:]])}`",
        "- commands, in order, each timed as a whole process ($REPO: this repository; $TMP: a fresh temporary "
        "directory, the working directory and WANDB_DIR; W&B offline; no OMP_NUM_THREADS / MKL_NUM_THREADS):",
        "",
        *[f"  - `{show(c)}`" for c in commands],
        "",
    ]
    return "\n".join(lines)


def write_results(path: Path, section: str) -> None:
    """Replace the text between the markers; everything outside them (hand-written notes) is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# namegen speed benchmark\n\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def verdict(load: tuple, args) -> str | None:
    """Why this run must not be recorded, or None."""
    before, after, cores = load[0][0], load[1][0], os.cpu_count() or 1
    if before > args.max_load or after > cores + args.max_load:
        return (f"NOT RECORDED: machine busy (load {before:.2f} before, limit {args.max_load}; "
                f"{after:.2f} after, limit {cores + args.max_load})")
    if args.quick:
        return "NOT RECORDED: --quick run"
    return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes (default: all three)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: small only, {QUICK_BATCHES} batches each side, 20,000 names; never recorded")
    p.add_argument("--max-load", type=float, default=0.5,
                   help="busy if the 1-minute load is above this before the run, or above cores + this after "
                        "(default 0.5)")
    p.add_argument("--data", default=str(ROOT / "namegen" / "assets" / "names.txt"),
                   help="names file (default: the names.txt shipped in namegen/assets)")
    p.add_argument("--notebook-batch-size", type=int, default=64,
                   help="the notebook's batch size (default 64: what its code ran, one DataLoader for every size; "
                        "its table says 128/128/256)")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="file to rewrite")
    args = p.parse_args(argv)
    args.sizes = ["small"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    if bad := [s for s in args.sizes if s not in SIZES]:
        p.error(f"unknown size(s) {bad}; choose from {SIZES}")
    args.data = str(Path(args.data).resolve())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    devices = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    info, before, results, commands = machine(), os.getloadavg(), {}, []
    busy = " (above --max-load: this run will not be recorded)" if before[0] > args.max_load else ""
    print(f"load before: {before[0]:.2f}{busy}; {info['cpu']}, {info['cores']} cores, torch {info['torch']}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="namegen-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = child_env(tmp)
        for device in devices:
            for size in args.sizes:
                nbk, ng = run_pairs(size, device, args, env, commands)
                floor = run_floor(size, args, env, commands) if size == FLOOR_SIZE and device == "cpu" else None
                results["epoch", size, device] = (nbk, ng, floor)
                print(f"{size} {device}: notebook {nbk['epoch_s']:.2f}s, namegen {ng['waited_s']:.2f}s as waited "
                      f"({ng['epoch_s']:.2f}s training)" + (f", floor {floor['epoch_s']:.2f}s" if floor else ""),
                      flush=True)
            if "small" in args.sizes:
                ckpt = results["epoch", "small", device][1]["ckpt"]
                n = 20_000 if args.quick else SAMPLE_N
                results["sample", "small", device] = run_sampling(ckpt, n, device, env, commands)
        load = (before, os.getloadavg())
        report = render(results, info, load, commands, tmp)
    refusal = verdict(load, args)
    if refusal:
        print(f"\n{refusal}\n\n{report}\n{refusal}; {args.results} not written")
        return 0
    write_results(Path(args.results), report)
    print(f"\n{report}\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
