"""Byte-level mutation fuzzer: damaged copies of valid ONNX models must only ever end in the
package's own errors (or work), never in another exception, a hang or a crash of the process.

    python tools/fuzz.py --cases 20000 --seed 1 --jobs 2      # the long run (docs/robustness.md)
    python tools/fuzz.py --seed 1 --case 1234                  # replay one case, with its traceback

Each case i of seed s is reproducible from (s, i) alone: it picks one of a few small valid models
(a ReLU CNN, a tf2onnx-style and a Caffe-style export, see tests/onnx_builders.py), applies 1 to 4
byte mutations (bit flips, overwritten, inserted, deleted, duplicated bytes, truncation; most of them
outside the weight bytes, where they change structure rather than numbers), writes the file and
runs the whole path: load and validate, build the attribution model, and explain two steps of a
random image with ONNX Runtime. Workers run in subprocesses, so a segfault or a hang is caught
and reported as that case (the worker is restarted after it). Prints the outcomes by class and
exits 1 if any case ended otherwise than in a package error or success.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NonFiniteError: damaged weight bytes that decode to NaN or infinity, named instead of giving NaN maps
PACKAGE_OUTCOMES = {"ok", "ModelError", "UnsupportedModelError", "UsageError", "InputError", "GnlOnnxError",
                    "NonFiniteError"}
MAX_FEED_VALUES = 1 << 22  # a mutated input shape may be huge: explaining it is the user's choice, skip it


def seed_models() -> list[bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    from onnx_builders import caffe_style_cnn, keras_style_cnn, relu_cnn

    rng = np.random.default_rng(0)
    return [relu_cnn(0, 8, 3).SerializeToString(), keras_style_cnn(rng, 6, 3)[0].SerializeToString(),
            caffe_style_cnn(rng, 6, 3)[0].SerializeToString()]


def weight_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the initializers' raw data (mutating them mostly just changes numbers)."""
    import onnx

    model = onnx.load_model_from_string(data)
    spans = []
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) >= 16:
            start = data.find(tensor.raw_data)
            if start >= 0:
                spans.append((start, start + len(tensor.raw_data)))
    return spans


def mutate(data: bytes, spans, rng) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not out:
            break

        def position():
            for _ in range(20):  # 85% of the edits land outside the weights
                p = int(rng.integers(0, len(out)))
                if rng.random() < 0.15 or not any(a <= p < b for a, b in spans):
                    return p
            return int(rng.integers(0, len(out)))

        kind = int(rng.integers(0, 7))
        p = position()
        if kind == 0:
            out[p] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[p] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
        elif kind == 2:
            out[p:p] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np_uint8()))
        elif kind == 3:
            del out[p:p + int(rng.integers(1, 9))]
        elif kind == 4:
            n = int(rng.integers(1, 33))
            out[p:p] = out[p:p + n]
        elif kind == 5:
            del out[p:]
        else:  # a varint pushed to its largest values
            out[p:p + 1] = b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
    return bytes(out)


def np_uint8():
    import numpy as np

    return np.uint8


def run_case(seed: int, case: int, seeds, spans, folder: Path) -> tuple[str, str]:
    """(outcome, detail) of one case."""
    import numpy as np

    import gnl_onnx
    from gnl_onnx.errors import GnlOnnxError

    rng = np.random.default_rng([seed, case])
    which = int(rng.integers(0, len(seeds)))
    path = folder / f"case{case}.onnx"
    path.write_bytes(mutate(seeds[which], spans[which], rng))
    method = str(rng.choice(["gnl_ig", "ig", "gradient"]))
    try:
        explainer = gnl_onnx.Explainer(path, method=method, steps=2, threads=1)
        shape = [1 if d is None else d for d in explainer.info["image_shape"]]
        if int(np.prod(shape)) > MAX_FEED_VALUES:
            return "ok", "not run: image too large to feed"
        explainer.explain(rng.normal(size=shape).astype(np.float32))
        return "ok", ""
    except GnlOnnxError as e:
        return type(e).__name__, str(e)[:300]
    except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
        return f"traceback {type(e).__name__}", traceback.format_exc()[-3000:]
    finally:
        path.unlink()


def worker(seed: int, start: int, stop: int, crash_at: int | None) -> None:
    """Run cases start..stop-1, one JSON line each on the original stdout (fd 1 is moved to stderr
    so that native libraries' prints cannot garble it)."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    warnings.simplefilter("ignore")
    seeds = seed_models()
    spans = [weight_spans(s) for s in seeds]
    with tempfile.TemporaryDirectory(prefix="gnl-fuzz-") as folder:
        for case in range(start, stop):
            if case == crash_at:  # the harness' own test: a native crash must be reported, not lost
                os.kill(os.getpid(), signal.SIGSEGV)
            outcome, detail = run_case(seed, case, seeds, spans, Path(folder))
            results.write(json.dumps({"case": case, "outcome": outcome, "detail": detail}) + "\n")


def drive(seed: int, cases: range, timeout: float, crash_at: int | None, record) -> None:
    """Run `cases` in worker processes, restarting after a crash or a hang."""
    next_case = cases.start
    while next_case < cases.stop:
        command = [sys.executable, __file__, "--worker", "--seed", str(seed), "--start", str(next_case),
                   "--stop", str(cases.stop)] + (["--crash-at", str(crash_at)] if crash_at is not None else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        startup = 120.0  # the first case also imports onnx, onnxruntime and builds the seed models
        while next_case < cases.stop:
            if not selector.select(timeout + startup):
                proc.kill()
                proc.wait()
                record(next_case, "hang", f"no answer within {timeout:.0f} s")
                next_case += 1
                break
            startup = 0.0
            line = proc.stdout.readline()
            if not line:  # the worker died
                code = proc.wait()
                reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                record(next_case, "crash", f"the worker process died ({reason})")
                next_case += 1
                break
            result = json.loads(line)
            record(result["case"], result["outcome"], result["detail"])
            next_case = result["case"] + 1
        selector.close()
        proc.stdout.close()
        if proc.poll() is None:
            proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="number of cases (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes in parallel (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take (default 60)")
    parser.add_argument("--case", type=int, help="replay this one case in this process, printing its outcome")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--crash-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seed, args.start, args.stop, args.crash_at)
        return 0
    if args.case is not None:
        seeds = seed_models()
        with tempfile.TemporaryDirectory() as folder:
            outcome, detail = run_case(args.seed, args.case, seeds, [weight_spans(s) for s in seeds], Path(folder))
        print(f"case {args.case} (seed {args.seed}): {outcome}\n{detail}")
        return 0 if outcome in PACKAGE_OUTCOMES else 1

    started = time.perf_counter()
    counts: collections.Counter = collections.Counter()
    failures = []
    lock = threading.Lock()

    def record(case, outcome, detail):
        with lock:
            counts[outcome] += 1
            if outcome not in PACKAGE_OUTCOMES:
                failures.append({"case": case, "outcome": outcome, "detail": detail})

    jobs = max(1, min(args.jobs, args.cases))
    bounds = [args.cases * k // jobs for k in range(jobs + 1)]
    threads = [threading.Thread(target=drive, args=(args.seed, range(bounds[k], bounds[k + 1]), args.timeout,
                                                    args.crash_at, record)) for k in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = {"seed": args.seed, "cases": sum(counts.values()), "seconds": round(time.perf_counter() - started, 1),
               "outcomes": dict(counts.most_common()), "failures": sorted(failures, key=lambda f: f["case"])}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['cases']} cases, seed {args.seed}, {summary['seconds']} s")
        for outcome, n in counts.most_common():
            print(f"  {outcome:24s} {n:6d}  {'' if outcome in PACKAGE_OUTCOMES else '<- not a package error'}")
        for f in summary["failures"]:
            print(f"FAILED case {f['case']} ({f['outcome']}): replay with  python tools/fuzz.py --seed {args.seed} "
                  f"--case {f['case']}\n{f['detail']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
