"""Small helpers shared by the benchmark scripts (``micro.py``, ``switch.py``,
``echo.py``, ``run.py``).

The scripts run as ``python bench/X.py``, so ``bench/`` is on ``sys.path``
and they import this module by name. The worker scripts run with ``python -I``
(``_micro_worker.py``, ``_switch_worker.py``) do not use it: the 0.2.0 side
venv runs ``_switch_worker.py`` on its own, and ``_micro_worker.py`` shares
code with it instead. Only the standard library is imported here.
"""

import json
import os
import platform
import statistics
import sys


def say(*args):
    """Progress to stderr (stdout is each script's Markdown)."""
    print(*args, file=sys.stderr, flush=True)


def median(values):
    """Median of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_model(fallback=None):
    """The CPU's model name from /proc/cpuinfo, else platform.processor(),
    else ``fallback`` (default: platform.machine())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or (platform.machine() if fallback is None else fallback)


def markdown_rows(rows):
    """Markdown table lines, one per row (a list of cell strings)."""
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def add_run_args(p, rounds_help, quick_help, json_help="also write every figure as JSON to PATH"):
    """The --rounds, --quick and --json options every benchmark takes.

    --rounds defaults to None; fill it in with ``default_rounds``.
    """
    p.add_argument("--rounds", type=int, default=None, help=rounds_help)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", metavar="PATH", help=json_help)


def default_rounds(args, full):
    """--rounds when not given: 1 with --quick, else ``full``."""
    if args.rounds is None:
        args.rounds = 1 if args.quick else full


def json_header(benchmark, unit, argv):
    """The first keys of a benchmark's JSON document: what ran, and on what."""
    return {
        "benchmark": benchmark,
        "unit": unit,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
    }


def write_json(path, doc, ensure_ascii=True):
    """Write ``doc`` to ``path`` (indented, newline at the end) and say so."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=ensure_ascii)
        f.write("\n")
    say("wrote %s" % path)
