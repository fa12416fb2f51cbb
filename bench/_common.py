"""Small helpers shared by the benchmark scripts (``micro.py``, ``switch.py``,
``echo.py``, ``run.py``).

The scripts run as ``python bench/X.py``, so ``bench/`` is on ``sys.path``
and they import this module by name. The worker scripts run with ``python -I``
(``_micro_worker.py``, ``_switch_worker.py``) do not use it: the 0.2.0 side
venv runs ``_switch_worker.py`` on its own, and ``_micro_worker.py`` shares
code with it instead. Only the standard library is imported here, and never
bluelet: which bluelet a benchmark measures is asked of a separate process.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile


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


def bluelet_under_test(tree=None, pure=False):
    """What ``import bluelet`` gives a benchmark's process: a dict with the
    package's ``path``, ``version`` and ``implementation``, or with ``error``.

    Asked of a ``python -I`` run in a temporary directory, so a checkout's
    source tree (which may hold no built core, or a stale one) never stands
    in for the installed package; ``tree`` puts that directory first
    instead (the scripts' ``--tree``). ``pure`` sets BLUELET_PURE_PYTHON=1.
    """
    code = ("import json, sys; sys.path[:0] = %r; import bluelet; print(json.dumps({"
            "'path': bluelet.__path__[0], 'version': getattr(bluelet, '__version__', None), "
            "'implementation': getattr(bluelet, 'IMPLEMENTATION', None)}))" % ([tree] if tree else [],))
    env = dict(os.environ)
    env.pop("BLUELET_PURE_PYTHON", None)
    env.pop("BLUELET_REQUIRE_EXTENSIONS", None)
    if pure:
        env["BLUELET_PURE_PYTHON"] = "1"
    with tempfile.TemporaryDirectory(prefix="bluelet-which-") as cwd:
        res = subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "exit status %d" % res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def describe_bluelet(info):
    """One line saying which bluelet ``bluelet_under_test()`` found."""
    if "error" in info:
        return "bluelet does not import: %s" % info["error"]
    return "bluelet %s from %s (core: %s)" % (info["version"], info["path"], info["implementation"])


def missing_core(info):
    """Why ``info``'s bluelet cannot give the compiled rows, or None if it can."""
    if "error" in info:
        return describe_bluelet(info)
    if info["implementation"] != "cython":
        return ("the bluelet that benchmarks import (%s) has no compiled core; install it "
                "with a C compiler and Cython (pip install .), or build a source tree in "
                "place (python setup.py build_ext --inplace) and pass --tree" % info["path"])
    return None
