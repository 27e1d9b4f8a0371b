"""Which programs a run compiles, how long XLA takes over them, and where they come from.

    python tools/profile_compilations.py --top 30 -- --config configs/default.py \\
        --config.num_rounds=2 --config.data.train_size=96 --config.data.test_size=24 \\
        --config.data.lifter_corpus_size=512 --config.compilation_cache= --workdir /tmp/profile

Runs the main job (``experiments.deform_and_learn``, with the arguments after ``--``) with JAX's
compilation log on and, at the end, prints the number of programs compiled, the seconds XLA spent
compiling them and tracing / lowering them, and the call sites that compiled most: each compilation
is attributed to the innermost frame of the project (``bodyjax/``, ``experiments/``) that triggered
it, so an operation run op by op outside a program shows up at the line that ran it. A cold run
needs an empty persistent cache: ``--config.compilation_cache=`` (or ``BODYJAX_NO_COMPILATION_CACHE=1``).
The scaled-down default above runs the main job's programs at a few seconds of compute.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import runpy
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT = (os.sep + "bodyjax" + os.sep, os.sep + "experiments" + os.sep)


class CompilationLog(logging.Handler):
    """Collects JAX's compilation records: per call site, the programs' names, count and seconds."""

    def __init__(self):
        super().__init__()
        self.sites = collections.defaultdict(lambda: {"count": 0, "seconds": 0.0, "names": set()})
        self.compile_s = 0.0
        self.trace_s = 0.0
        self.count = 0
        self._site = None

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling jit("):
            name = msg.split("(", 2)[1].split(")")[0]
            frames = [f for f in traceback.extract_stack() if any(p in f.filename for p in _PROJECT)]
            where = (f"{os.path.relpath(frames[-1].filename, REPO)}:{frames[-1].lineno} {frames[-1].name}"
                     if frames else "(outside the project)")
            self._site = where
            self.count += 1
            self.sites[where]["count"] += 1
            self.sites[where]["names"].add(name)
            return
        seconds = re.search(r" in ([0-9.eE+-]+) sec", msg)
        if not seconds:
            logging.getLogger().handle(record)        # any other JAX message goes on as usual
            return
        t = float(seconds.group(1))
        if msg.startswith("Finished XLA compilation"):
            self.compile_s += t
            if self._site is not None:
                self.sites[self._site]["seconds"] += t
        elif msg.startswith("Finished tracing") or msg.startswith("Finished jaxpr to MLIR"):
            self.trace_s += t

    def report(self, top: int) -> str:
        lines = [f"{self.count} programs compiled: XLA compilation {self.compile_s:.1f} s, tracing and lowering "
                 f"{self.trace_s:.1f} s", f"{'seconds':>8} {'programs':>8}  call site [programs' names]"]
        for where, s in sorted(self.sites.items(), key=lambda kv: -kv[1]["seconds"])[:top]:
            names = ", ".join(sorted(s["names"]))
            lines.append(f"{s['seconds']:8.2f} {s['count']:8d}  {where} [{names[:90]}]")
        return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ours, job = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=30, help="call sites to list (the most seconds first)")
    args = parser.parse_args(ours)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")

    import jax  # noqa: PLC0415

    log = CompilationLog()
    logger = logging.getLogger("jax")
    logger.addHandler(log)
    logger.propagate = False      # the compilation log is summarised at the end, not printed
    jax.config.update("jax_log_compiles", True)
    sys.path.insert(0, REPO)
    sys.argv = ["experiments.deform_and_learn"] + job
    try:
        runpy.run_module("experiments.deform_and_learn", run_name="__main__")
    except SystemExit as e:       # absl's app.run exits when the job ends
        if e.code not in (None, 0):
            raise
    finally:
        logger.removeHandler(log)
        logger.propagate = True
        print(log.report(args.top), flush=True)


if __name__ == "__main__":
    main()
