"""The core's stub, ``bluelet/_loop.pyi``, describes both twins.

Type checkers read the stub for the core whichever twin runs (see
``[tool.mypy]`` in pyproject.toml), so it must match each of them: the same
public module-level names, the same classes with the same public bases and
members, which classes are final and which cannot be mixed in multiple
inheritance, and the same parameters (names, kinds and default values) for
every function, method and constructor. The stub is read with ``ast`` from
the package under test, so this also checks that it ships, together with
``py.typed``. Runs on each core through the ``core`` fixture.
"""

import ast
import inspect
import os
import types


import bluelet
from bluelet import _impl

PACKAGE_DIR = os.path.dirname(bluelet.__file__)


def _parse_stub():
    with open(os.path.join(PACKAGE_DIR, "_loop.pyi"), encoding="utf-8") as f:
        return ast.parse(f.read())


STUB = _parse_stub()
# Public top-level definitions; private ones (_HasFileno, _FileLike) are the
# stub's own helpers.
STUB_CLASSES = {node.name: node for node in STUB.body
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_")}
STUB_FUNCTIONS = {node.name: node for node in STUB.body
                  if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
STUB_VARIABLES = {node.target.id for node in STUB.body
                  if isinstance(node, ast.AnnAssign) and not node.target.id.startswith("_")}


def _stub_all():
    for node in STUB.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]:
            return ast.literal_eval(node.value)
    return None


def _decorators(node):
    return {d.id for d in node.decorator_list if isinstance(d, ast.Name)}


def _stub_parameters(func, method):
    """[(name, kind, default)] of a stub function, as inspect would list them."""
    args = func.args
    positional = [(a, inspect.Parameter.POSITIONAL_ONLY) for a in args.posonlyargs]
    positional += [(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in args.args]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults))
    defaults += [ast.literal_eval(d) for d in args.defaults]
    params = [(a.arg, kind, default) for (a, kind), default in zip(positional, defaults)]
    if args.vararg:
        params.append((args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params.append((a.arg, inspect.Parameter.KEYWORD_ONLY,
                       inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if args.kwarg:
        params.append((args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return params[1:] if method else params


def _runtime_parameters(obj, method):
    params = [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]
    return params[1:] if method else params


def _stub_bases(node):
    """The names of the stub classes ``node`` derives from (``Event[bytes]``
    is Event; ``Generic[...]`` is no stub class)."""
    for base in node.bases:
        if isinstance(base, ast.Subscript):
            base = base.value
        if isinstance(base, ast.Name) and base.id in STUB_CLASSES:
            yield base.id


def _stub_members(name):
    """{member: "method" | "data"} of stub class ``name``, inherited ones included."""
    node = STUB_CLASSES[name]
    members = {}
    for base in _stub_bases(node):
        members.update(_stub_members(base))
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            members[item.name] = "data" if "property" in _decorators(item) else "method"
        elif isinstance(item, ast.AnnAssign):
            members[item.target.id] = "data"
    return members


def _stub_ancestors(name):
    ancestors = {name}
    for base in _stub_bases(STUB_CLASSES[name]):
        ancestors |= _stub_ancestors(base)
    return ancestors


def _nearest(name, find):
    """``find(node)`` for stub class ``name``, else for its nearest stub ancestor."""
    node = STUB_CLASSES[name]
    found = find(node)
    for base in _stub_bases(node):
        if found is None:
            found = _nearest(base, find)
    return found


def _stub_constructor(name):
    """The ``__init__`` stub class ``name`` declares or inherits, or None (object's)."""
    return _nearest(name, lambda node: next(
        (item for item in node.body
         if isinstance(item, ast.FunctionDef) and item.name == "__init__"), None))


def _disjoint_base(name):
    """The nearest stub class among ``name`` and its ancestors marked @disjoint_base."""
    return _nearest(name, lambda node: node.name if "disjoint_base" in _decorators(node) else None)


def _own_public_names(module):
    """Public names ``module`` defines (not the classes and modules it imports)."""
    names = set()
    for name in dir(module):
        obj = getattr(module, name)
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and obj.__module__ != module.__name__:
            continue  # TaskInfo, Cancelled, ...: typed where they are defined
        names.add(name)
    return names


def _derivable(*bases):
    """Whether a class can derive from ``bases`` (in this order)."""
    try:
        type("Derived", bases, {})
    except TypeError:
        return False
    return True


def test_stub_and_marker_ship_with_the_package():
    assert os.path.isfile(os.path.join(PACKAGE_DIR, "py.typed"))
    assert STUB_CLASSES and STUB_FUNCTIONS


def test_stub_all_is_the_core_names(core):
    module = _impl.load(core)
    assert _stub_all() == list(module.__all__)
    assert sorted(_stub_all()) == sorted(_impl.CORE_NAMES)


def test_stub_has_every_public_name_of_the_core(core):
    module = _impl.load(core)
    stub_names = set(STUB_CLASSES) | set(STUB_FUNCTIONS) | STUB_VARIABLES
    assert stub_names == _own_public_names(module)
    for name in STUB_CLASSES:
        assert inspect.isclass(getattr(module, name)), name
    for name in STUB_FUNCTIONS:
        assert inspect.isroutine(getattr(module, name)), name


def test_stub_classes_have_the_core_bases_members_and_finality(core):
    module = _impl.load(core)
    for name in STUB_CLASSES:
        cls = getattr(module, name)
        public_mro = {k.__name__ for k in cls.__mro__
                      if k.__module__ == module.__name__ and not k.__name__.startswith("_")}
        assert _stub_ancestors(name) == public_mro, name
        stub = _stub_members(name)
        runtime = {attr: "method" if callable(getattr(cls, attr)) else "data"
                   for attr in dir(cls) if not attr.startswith("_")}
        assert {a: k for a, k in stub.items() if not a.startswith("_")} == runtime, name
        for dunder in (a for a in stub if a.startswith("__") and a != "__init__"):
            # Defined by the core, not inherited from object.
            assert any(dunder in vars(k) for k in cls.__mro__[:-1]), (name, dunder)
        assert ("final" in _decorators(STUB_CLASSES[name])) == (not _derivable(cls)), name


def test_stub_disjoint_bases_say_which_core_classes_mix(core):
    """``class X(A, B)`` works on the core exactly when the stub allows it:
    the two classes' disjoint bases are one the other's ancestor, and A is
    not B's ancestor (which no MRO allows)."""
    module = _impl.load(core)
    names = [n for n in STUB_CLASSES if "final" not in _decorators(STUB_CLASSES[n])]
    mismatches = []
    for a in names:
        for b in names:
            if a == b:
                continue
            disjoint = {_disjoint_base(a), _disjoint_base(b)} - {None}
            chain = not disjoint or any(disjoint <= _stub_ancestors(d) for d in disjoint)
            allowed = chain and a not in _stub_ancestors(b)
            mixes = _derivable(getattr(module, a), getattr(module, b))
            if mixes != allowed:
                mismatches.append((a, b, "mixes" if mixes else "does not mix"))
    assert mismatches == []


def test_stub_functions_have_the_core_parameters(core):
    module = _impl.load(core)
    mismatches = {}
    for name, node in STUB_FUNCTIONS.items():
        stub = _stub_parameters(node, False)
        runtime = _runtime_parameters(getattr(module, name), False)
        if stub != runtime:
            mismatches[name] = (stub, runtime)
    assert mismatches == {}


def test_stub_methods_have_the_core_parameters(core):
    module = _impl.load(core)
    mismatches = {}
    for class_name, class_node in STUB_CLASSES.items():
        cls = getattr(module, class_name)
        for node in class_node.body:
            # Special methods (__await__, __iter__) are slots of a cdef class,
            # with no signature to read; that the core defines them is
            # checked with the members.
            if (isinstance(node, ast.FunctionDef) and not node.name.startswith("__")
                    and "property" not in _decorators(node)):
                stub = _stub_parameters(node, True)
                method = getattr(cls, node.name, None)
                runtime = _runtime_parameters(method, True) if callable(method) else method
                if stub != runtime:
                    mismatches["%s.%s" % (class_name, node.name)] = (stub, runtime)
    assert mismatches == {}


def test_stub_constructors_have_the_pure_core_parameters():
    """Of the pure twin: a cdef class's constructor has no signature to read
    (test_parity.py checks the compiled ones take the same arguments)."""
    module = _impl.load("python")
    mismatches = {}
    for name in STUB_CLASSES:
        init = _stub_constructor(name)
        stub = [] if init is None else _stub_parameters(init, True)
        runtime = _runtime_parameters(getattr(module, name), False)
        if stub != runtime:
            mismatches[name] = (stub, runtime)
    assert mismatches == {}
