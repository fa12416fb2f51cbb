"""Surface parity of the two scheduler cores.

``bluelet._loop_py`` (pure Python) and ``bluelet._loop`` (Cython) must look
the same from outside: the same public names, the same classes with the same
public methods and attributes, the same class hierarchy, the same call
signatures and the same docstrings on the public functions. These tests take
both core modules straight from ``_impl.load`` and compare them; they do not
switch the package's active core.

Where inspect cannot read a compiled constructor's signature (a cdef class
has no Python-level ``__init__``), both constructors are called with the same
argument lists and must accept or reject (TypeError) the same ones.

They need the compiled core. When it does not import, every test here fails
if ``BLUELET_REQUIRE_EXTENSIONS=1`` (CI) and is skipped otherwise.
"""

import inspect
import math
import os
import sys
import types
from fractions import Fraction

import pytest

from bluelet import _impl

REQUIRE_EXTENSIONS = os.environ.get("BLUELET_REQUIRE_EXTENSIONS", "") not in ("", "0")

CORE_NAMES = tuple(_impl.CORE_NAMES)

EVENT_CLASS_NAMES = (
    "Event", "WaitableEvent", "ValueEvent", "ExceptionEvent", "SpawnEvent",
    "JoinEvent", "KillEvent", "DelegationEvent", "ReturnEvent", "SleepEvent",
    "ReadEvent", "WriteEvent", "AcceptEvent", "ReceiveEvent", "SendEvent",
    "WaitQueue", "Completion",
)
CLASS_NAMES = EVENT_CLASS_NAMES + ("Loop",)
FUNCTION_NAMES = tuple(name for name in CORE_NAMES if name not in CLASS_NAMES)
#: Classes that can be built outside a running loop (a Completion belongs to
#: the loop that makes it: see test_completion_needs_a_running_loop).
INSTANCE_CLASS_NAMES = tuple(name for name in CLASS_NAMES if name != "Completion")

#: The event classes the scheduler waits on through descriptors or timers.
WAITABLE_CLASS_NAMES = (
    "SleepEvent", "ReadEvent", "WriteEvent", "AcceptEvent", "ReceiveEvent", "SendEvent",
)


def cores():
    """(pure module, compiled module); fail or skip if the compiled one is missing."""
    pure = _impl.load("python")
    try:
        compiled = _impl.load("cython")
    except ImportError as exc:
        message = (
            "the compiled core bluelet._loop does not import (%s: %s); build it with "
            "`python setup.py build_ext --inplace` or `pip install .`" % (type(exc).__name__, exc))
        if REQUIRE_EXTENSIONS:
            pytest.fail(message + " -- BLUELET_REQUIRE_EXTENSIONS=1 makes this a failure")
        pytest.skip(message + " -- surface parity needs both cores "
                    "(set BLUELET_REQUIRE_EXTENSIONS=1 to fail instead of skipping)")
    return pure, compiled


def both(name):
    pure, compiled = cores()
    return getattr(pure, name), getattr(compiled, name)


def _public(names):
    return sorted(n for n in names if not n.startswith("_"))


def _gen():
    yield None


class _FakeSock:
    def fileno(self):
        return 7


def _sample_args(name):
    """Valid constructor arguments for class ``name`` (no I/O happens at construction)."""
    holder = types.SimpleNamespace(sock=_FakeSock())
    return {
        "Event": (),
        "WaitableEvent": (),
        "ValueEvent": (1,),
        "ExceptionEvent": (ValueError("x"),),
        "SpawnEvent": (_gen(),),
        "JoinEvent": (_gen(),),
        "KillEvent": (_gen(),),
        "DelegationEvent": (_gen(),),
        "ReturnEvent": (1,),
        "SleepEvent": (1,),
        "ReadEvent": (7, 10),
        "WriteEvent": (7, b"data"),
        "AcceptEvent": (holder,),
        "ReceiveEvent": (holder, 10),
        "SendEvent": (holder, b"data"),
        "WaitQueue": (),
        "Loop": (),
    }[name]


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_compiled_core_is_the_compiled_module():
    pure, compiled = cores()
    assert pure.__name__ == "bluelet._loop_py"
    assert compiled.__name__ == "bluelet._loop"
    # A compiled module, not a stray .py shadowing it.
    assert not compiled.__file__.endswith((".py", ".pyc")), compiled.__file__


def test_both_cores_define_every_core_name():
    pure, compiled = cores()
    missing = {
        "python": [n for n in CORE_NAMES if not hasattr(pure, n)],
        "cython": [n for n in CORE_NAMES if not hasattr(compiled, n)],
    }
    assert missing == {"python": [], "cython": []}


def test_all_is_the_same_in_both_cores_and_matches_core_names():
    pure, compiled = cores()
    assert list(pure.__all__) == list(compiled.__all__)
    assert sorted(pure.__all__) == sorted(CORE_NAMES)
    assert len(set(pure.__all__)) == len(pure.__all__)


def test_same_public_module_level_names():
    """Beyond __all__: READ, WRITE, log, ... exist in both (imported modules aside)."""
    pure, compiled = cores()

    def names(module):
        return {n for n in _public(dir(module))
                if not isinstance(getattr(module, n), types.ModuleType)}

    assert names(pure) == names(compiled)


def test_readiness_constants_match():
    pure, compiled = cores()
    assert (pure.READ, pure.WRITE) == (compiled.READ, compiled.WRITE)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_same_kind_of_object(name):
    p, c = both(name)
    assert inspect.isclass(p) == inspect.isclass(c) == (name in CLASS_NAMES)
    assert callable(p) and callable(c)


# ---------------------------------------------------------------------------
# Class hierarchy
# ---------------------------------------------------------------------------


def test_waitable_and_event_subclasses_in_both_cores():
    pure, compiled = cores()
    for module in (pure, compiled):
        for name in WAITABLE_CLASS_NAMES:
            cls = getattr(module, name)
            assert issubclass(cls, module.WaitableEvent), (module.__name__, name)
        for name in EVENT_CLASS_NAMES:
            assert issubclass(getattr(module, name), module.Event), (module.__name__, name)
        assert not issubclass(module.Loop, module.Event)


@pytest.mark.parametrize("sub", CLASS_NAMES)
def test_same_issubclass_relations(sub):
    pure, compiled = cores()
    relations = {
        "python": {sup: issubclass(getattr(pure, sub), getattr(pure, sup)) for sup in CLASS_NAMES},
        "cython": {sup: issubclass(getattr(compiled, sub), getattr(compiled, sup))
                   for sup in CLASS_NAMES},
    }
    assert relations["python"] == relations["cython"]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_mro_by_name(name):
    """Private bases count too (ReadEvent & co. share a private _FdEvent base)."""
    p, c = both(name)
    assert [k.__name__ for k in p.__mro__] == [k.__name__ for k in c.__mro__]


@pytest.mark.parametrize("name", INSTANCE_CLASS_NAMES)
def test_instances_are_instances_of_the_same_public_classes(name):
    pure, compiled = cores()
    kinds = {}
    for label, module in (("python", pure), ("cython", compiled)):
        obj = getattr(module, name)(*_sample_args(name))
        kinds[label] = sorted(n for n in CLASS_NAMES if isinstance(obj, getattr(module, n)))
    assert kinds["python"] == kinds["cython"]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_classes_can_be_subclassed(name):
    p, c = both(name)

    def subclassable(cls):
        try:
            type("Sub", (cls,), {})
        except TypeError:
            return False
        return True

    assert subclassable(p) == subclassable(c)


# ---------------------------------------------------------------------------
# Members of the classes
# ---------------------------------------------------------------------------


def _class_members(cls):
    """public name -> 'method' | 'data' | 'property', as seen on the class."""
    members = {}
    for attr in _public(dir(cls)):
        static = inspect.getattr_static(cls, attr)
        if isinstance(static, property):
            members[attr] = "property"
        elif callable(getattr(cls, attr)):
            members[attr] = "method"
        else:
            members[attr] = "data"
    return members


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_public_class_members(name):
    p, c = both(name)
    pm, cm = _class_members(p), _class_members(c)
    assert sorted(pm) == sorted(cm)
    # Properties (pure) may be getset descriptors (Cython): compare method vs not.
    assert {a: k == "method" for a, k in pm.items()} == {a: k == "method" for a, k in cm.items()}


@pytest.mark.parametrize("name", INSTANCE_CLASS_NAMES)
def test_same_public_instance_attributes_and_values(name):
    p, c = both(name)
    args = _sample_args(name)
    pi, ci = p(*args), c(*args)
    assert _public(dir(pi)) == _public(dir(ci))
    for attr in _public(dir(pi)):
        pv, cv = getattr(pi, attr), getattr(ci, attr)
        if callable(pv):
            assert callable(cv), attr
            continue
        if attr == "wakeup_time":
            # Both read the monotonic clock at construction: same clock, not same instant.
            assert isinstance(pv, float) and isinstance(cv, float)
            assert abs(pv - cv) < 60.0
            continue
        assert type(pv) is type(cv), (attr, pv, cv)
        assert pv == cv, attr


@pytest.mark.parametrize("name", INSTANCE_CLASS_NAMES)
def test_no_new_attributes_on_instances(name):
    """Both cores use slots / cdef attributes: typos raise instead of sticking."""
    p, c = both(name)
    for cls in (p, c):
        obj = cls(*_sample_args(name))
        with pytest.raises(AttributeError):
            obj.no_such_attribute = 1


@pytest.mark.parametrize("name", INSTANCE_CLASS_NAMES)
def test_same_writability_of_public_attributes(name):
    """Each public data attribute is writable in both cores or read-only in both."""
    p, c = both(name)
    args = _sample_args(name)
    outcome = {}
    for label, cls in (("python", p), ("cython", c)):
        obj = cls(*args)
        result = {}
        for attr in _public(dir(obj)):
            value = getattr(obj, attr)
            if callable(value):
                continue
            try:
                setattr(obj, attr, value)  # the same value: valid for typed attributes
            except AttributeError:
                result[attr] = "read-only"
            else:
                result[attr] = "writable" if getattr(obj, attr) == value else "changed"
        outcome[label] = result
    assert outcome["python"] == outcome["cython"]


def test_value_event_value_is_read_only_in_both():
    pure, compiled = cores()
    for module in (pure, compiled):
        event = module.ValueEvent(1)
        assert event.value == 1
        with pytest.raises(AttributeError):
            event.value = 2
        with pytest.raises(AttributeError):
            del event.value
        assert event.value == 1
        # null() is one shared, immutable event.
        assert module.null() is module.null()
        assert isinstance(module.null(), module.ValueEvent)
        assert module.null().value is None
        with pytest.raises(AttributeError):
            module.null().value = 1


def test_sleep_event_time_left_in_both():
    pure, compiled = cores()
    for module in (pure, compiled):
        event = module.SleepEvent(1)
        left = event.time_left()
        assert isinstance(left, float)
        assert 0.0 < left <= 1.0
        assert event.duration == 1.0
        assert module.SleepEvent(-5).time_left() == 0.0
        assert module.SleepEvent(-5).duration == 0.0


def test_send_event_sendall_true_false_in_both():
    p, c = both("SendEvent")
    holder = types.SimpleNamespace(sock=_FakeSock())
    for flag in (True, False):
        assert p(holder, b"x", flag).sendall is c(holder, b"x", flag).sendall is flag
    assert p(holder, b"x").sendall is c(holder, b"x").sendall is False


def test_send_event_sendall_reads_back_the_same_non_bool():
    p, c = both("SendEvent")
    holder = types.SimpleNamespace(sock=_FakeSock())
    pv, cv = p(holder, b"x", 1).sendall, c(holder, b"x", 1).sendall
    assert (type(pv), pv) == (type(cv), cv)


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_same_function_signature(name):
    p, c = both(name)
    ps, cs = _signature(p), _signature(c)
    assert ps is not None, "inspect cannot read the pure %s()" % name
    assert cs is not None, "inspect cannot read the compiled %s() (built with binding=True?)" % name
    assert ps == cs


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_public_method_signatures(name):
    p, c = both(name)
    for attr, kind in _class_members(p).items():
        if kind != "method":
            continue
        ps, cs = _signature(getattr(p, attr)), _signature(getattr(c, attr))
        assert ps is not None and cs is not None, "%s.%s: signature unreadable" % (name, attr)
        assert ps == cs, "%s.%s" % (name, attr)


def _calls_for(sig):
    """(args, kwargs) calls around ``sig``: every arity 0..n+1, keyword forms, a bad keyword."""
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    assert all(p.kind != p.VAR_POSITIONAL and p.kind != p.VAR_KEYWORD
               for p in sig.parameters.values())
    return params


def _constructor_calls(name, sig):
    valid = _sample_args(name)
    params = _calls_for(sig)
    names = [p.name for p in params]
    filler = valid + ("extra",) * 3
    calls = []
    for n in range(len(names) + 2):
        calls.append((tuple(filler[:n]), {}))
    # All by keyword (defaulted ones too), and the last one by keyword.
    calls.append(((), dict(zip(names, valid))))
    by_keyword = {p.name: p.default for p in params if p.default is not p.empty}
    by_keyword.update(zip(names, valid))
    calls.append(((), by_keyword))
    if names and len(valid) == len(names):
        calls.append((valid[:-1], {names[-1]: valid[-1]}))
        # The same argument twice: by position and by keyword.
        calls.append((valid, {names[0]: valid[0]}))
    calls.append((valid, {"no_such_parameter": 1}))
    return calls


def _outcome(fn, args, kwargs):
    try:
        fn(*args, **kwargs)
    except TypeError:
        return "TypeError"
    except Exception as exc:  # a value check in __init__, not an arity problem
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("name", INSTANCE_CLASS_NAMES)
def test_same_constructor_signature(name):
    """inspect.signature where both cores expose one; otherwise compare by calling.

    A cdef class has no Python-level __init__ signature (inspect raises), so
    the compiled constructor is checked by calling both with the same
    arguments -- every arity, keyword forms, a duplicate and an unknown
    keyword -- and requiring the same outcome (and, for the pure core, the
    outcome ``Signature.bind`` predicts).
    """
    p, c = both(name)
    ps, cs = _signature(p), _signature(c)
    assert ps is not None, "inspect cannot read the pure %s constructor" % name
    if cs is not None:
        assert ps == cs
    checked = 0
    for args, kwargs in _constructor_calls(name, ps):
        try:
            ps.bind(*args, **kwargs)
            predicted = "ok"
        except TypeError:
            predicted = "TypeError"
        got = {"python": _outcome(p, args, kwargs), "cython": _outcome(c, args, kwargs)}
        assert got["python"] == predicted, (name, args, kwargs, got)
        assert got["cython"] == got["python"], (name, args, kwargs, got)
        checked += 1
    assert checked >= 3


BAD_CONSTRUCTIONS = [
    ("sleep", ("1",)),
    ("sleep", (None,)),
    ("sleep", (float("nan"),)),
    ("sleep", (1j,)),
    ("spawn", (1,)),
    ("spawn", (lambda: None,)),
    ("call", ([],)),
    ("join", (None,)),
    ("kill", ("gen",)),
    ("WriteEvent", (7, "text")),
    ("ExceptionEvent", (5,)),
    ("timeout", (1, 5)),
    ("timeout", ("1", _gen())),
    ("Completion", ()),
]


@pytest.mark.parametrize("name,args", BAD_CONSTRUCTIONS,
                         ids=["%s%r" % (n, a) for n, a in BAD_CONSTRUCTIONS])
def test_same_error_for_bad_arguments(name, args):
    """Bad input fails at the call, with the same exception and message."""
    p, c = both(name)
    errors = []
    for fn in (p, c):
        with pytest.raises(Exception) as info:
            fn(*args)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("duration,expected", [
    (0, 0.0), (True, 1.0), (-1, 0.0), (Fraction(1, 2), 0.5), (2 ** 40, float(2 ** 40)),
    (float("inf"), math.inf), (-math.inf, 0.0),
])
def test_same_sleep_duration_normalisation(duration, expected):
    p, c = both("SleepEvent")
    assert p(duration).duration == c(duration).duration == expected


def test_run_rejects_non_generators_the_same_way():
    pure, compiled = cores()
    errors = []
    for module in (pure, compiled):
        for target in (module.run, module.Loop().run):
            with pytest.raises(TypeError) as info:
                target([1, 2])
            errors.append(str(info.value))
    assert len(set(errors)) == 1, errors


# ---------------------------------------------------------------------------
# Docstrings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_same_function_docstring(name):
    p, c = both(name)
    assert p.__doc__ and p.__doc__.strip(), "pure %s() has no docstring" % name
    assert c.__doc__ == p.__doc__


def test_same_loop_run_docstring():
    p, c = both("Loop")
    assert p.run.__doc__ and c.run.__doc__ == p.run.__doc__


def _method_docs(pure_cls, compiled_cls):
    """{name: (pure doc, compiled doc)} for public methods and properties.

    A pure ``property`` is a getset descriptor in the compiled class: compare
    the descriptors' own docstrings (reading through the class would give
    the property object's, not the value's).
    """
    docs = {}
    for attr in _public(dir(pure_cls)):
        pure_static = inspect.getattr_static(pure_cls, attr)
        if isinstance(pure_static, property):
            docs[attr] = (pure_static.__doc__,
                          getattr(inspect.getattr_static(compiled_cls, attr, None), "__doc__", None))
        elif callable(getattr(pure_cls, attr)):
            docs[attr] = (getattr(pure_cls, attr).__doc__,
                          getattr(getattr(compiled_cls, attr, None), "__doc__", None))
    return docs


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_public_method_docstrings(name):
    """The compiled twin copies the pure docstrings onto "functions and methods"."""
    p, c = both(name)
    docs = _method_docs(p, c)
    assert all(pure for pure, _ in docs.values()), "pure %s has an undocumented method" % name
    assert {a: c for a, (_, c) in docs.items()} == {a: p for a, (p, _) in docs.items()}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_completion_needs_a_running_loop():
    """A Completion belongs to the loop that makes it: both refuse outside one."""
    p, c = both("Completion")
    errors = []
    for cls in (p, c):
        with pytest.raises(RuntimeError) as info:
            cls()
        errors.append(str(info.value))
    assert errors[0] == errors[1]
