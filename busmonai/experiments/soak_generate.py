"""Soak test of ``busmonai generate``: does its memory stay flat over a long run?

Runs ``busmonai generate`` as a child process (the real command, its own interpreter) for
``--n`` images at the cpu profile from the given checkpoints, and records the child's resident
memory (RSS: psutil when installed, else ``/proc/<pid>/status`` ``VmRSS``) each time another
``--every`` images have been written. It prints a table and a verdict: "memory flat after
warm-up" when the largest RSS after the first ``--warmup`` images exceeds the RSS at the end of
the warm-up by less than ``--threshold`` percent; otherwise "memory grows after warm-up", a
sign of a leak (tensors, images or file handles kept per batch).

Usage::

    python scripts/soak_generate.py --autoencoder-ckpt runs/autoencoder/model.pt \\
        --ldm-ckpt runs/ldm/model.pt --datalist data/prepared/datalist.json --n 2000 --out runs/soak

Arguments after ``--`` go to ``busmonai generate`` unchanged (e.g. ``-- --steps 20
--controlnet-ckpt runs/controlnet/model.pt``). Exit code: 0 flat, 1 growing (or too few samples
for a verdict), 2 bad arguments or a failed ``generate``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

FLAT = "memory flat after warm-up"
GROWS = "memory grows after warm-up"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, or None once it has exited (a zombie reads 0)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    rss = 0
    if psutil is not None:
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    else:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            rss = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return rss or None


def count_images(out: Path) -> int:
    """PNG files ``generate`` has written to ``out/images`` so far."""
    try:
        return sum(1 for name in os.listdir(out / "images") if name.endswith(".png"))
    except OSError:
        return 0


def generate_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The ``busmonai generate`` command line of the soak."""
    return [sys.executable, "-m", "busmonai.cli", "generate", "--out", str(args.out), "--n", str(args.n),
            "--autoencoder-ckpt", str(args.autoencoder_ckpt), "--ldm-ckpt", str(args.ldm_ckpt),
            "--datalist", str(args.datalist), *extra]


def soak(command: Sequence[str], out: Path, every: int, poll: float = 0.2) -> tuple[int, list[tuple[int, int]]]:
    """Run ``command`` and sample its RSS each time ``every`` more images exist under ``out``.

    Returns:
        The child's exit code and ``(images written, RSS bytes)`` samples, the last one taken at
        the end of the run.
    """
    child = subprocess.Popen(list(command))
    samples: list[tuple[int, int]] = []
    last: tuple[int, int] | None = None
    mark = every
    try:
        while child.poll() is None:
            rss, written = rss_bytes(child.pid), count_images(out)
            if rss is not None:
                last = (written, rss)
                if written >= mark:
                    samples.append(last)
                    mark = (written // every + 1) * every
            time.sleep(poll)
    except BaseException:
        child.terminate()  # the CLI turns SIGTERM into a clean exit (143)
        child.wait()
        raise
    if last is not None and (not samples or last[0] > samples[-1][0]):
        samples.append(last)
    return child.returncode, samples


def verdict(samples: Sequence[tuple[int, int]], warmup: int, threshold: float) -> tuple[str, float | None]:
    """The verdict and the growth (percent) of the largest RSS after warm-up over the RSS at its end.

    Returns:
        ``(FLAT or GROWS, growth)``, or a sentence and None when fewer than two samples lie at or
        after the warm-up.
    """
    after = [rss for written, rss in samples if written >= warmup]
    if len(after) < 2:
        return f"too few samples after the {warmup}-image warm-up for a verdict; raise --n", None
    growth = 100.0 * (max(after[1:]) - after[0]) / after[0]
    return (FLAT if growth < threshold else GROWS), growth


def table(samples: Sequence[tuple[int, int]], warmup: int) -> str:
    """``images  RSS MB  vs warm-up`` rows."""
    base = next((rss for written, rss in samples if written >= warmup), None)
    rows = [f"{'images':>8}  {'RSS MB':>9}  {'vs warm-up':>10}"]
    for written, rss in samples:
        change = f"{100.0 * (rss - base) / base:+9.1f}%" if base and written >= warmup else f"{'':>10}"
        rows.append(f"{written:>8}  {rss / 2**20:>9.1f}  {change}")
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The soak's options, and the arguments after ``--`` for ``busmonai generate``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder-ckpt", type=Path, required=True)
    parser.add_argument("--ldm-ckpt", type=Path, required=True)
    parser.add_argument("--datalist", type=Path, required=True, help="the real datalist generate reads")
    parser.add_argument("--n", type=int, default=2000, help="images to generate (default 2000)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"), help="a new folder for the images")
    parser.add_argument("--every", type=int, default=100, help="sample the RSS every so many images (default 100)")
    parser.add_argument("--warmup", type=int, default=300, help="images before the reference sample (default 300)")
    parser.add_argument("--threshold", type=float, default=5.0, help="allowed growth after warm-up in %% (default 5)")
    return parser.parse_args(own), extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; return the exit code (0 flat, 1 growing or no verdict, 2 bad input or failure)."""
    args, extra = parse_args(argv)
    for option, path in (("--autoencoder-ckpt", args.autoencoder_ckpt), ("--ldm-ckpt", args.ldm_ckpt),
                         ("--datalist", args.datalist)):
        if not path.is_file():
            print(f"error: {path}: not found for {option}; train the stage first or pass the file", file=sys.stderr)
            return 2
    if args.n < 1 or args.every < 1 or args.warmup < 0 or not args.threshold > 0:
        print("error: --n and --every must be at least 1, --warmup at least 0 and --threshold above 0", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: --out {args.out} is not empty; the soak needs a new folder to count the images it writes",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    code, samples = soak(generate_command(args, extra), args.out, args.every)
    seconds = time.perf_counter() - start
    print(table(samples, args.warmup))
    if code != 0:
        print(f"error: busmonai generate exited with {code} after {seconds:.0f} s", file=sys.stderr)
        return 2
    text, growth = verdict(samples, args.warmup, args.threshold)
    if growth is not None:
        text = f"{text} ({growth:+.1f} % after {args.warmup} images; threshold {args.threshold:g} %)"
    print(f"{count_images(args.out)} images in {seconds:.0f} s: {text}")
    return 0 if text.startswith(FLAT) else 1
