"""Find candidates by built-in name or by import path."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
import sys
import sysconfig
import traceback
from pathlib import Path, PurePosixPath

from harness.candidates.protocol import Candidate, as_candidate

BUILTIN = {
    "reference": "harness.candidates.reference:ReferenceCandidate",
    "hf": "harness.candidates.hf:HFCandidate",
    "emulation": "harness.candidates.emulation:EmulatedBlock",
    "flash": "harness.candidates.flash:FlashBlock",
    "nxdi-emulation": "harness.neuron.candidate:NxdiEmulation",
}
# Need the Neuron SDK (harness/neuron): never in the default set, and a clear error without it.
NEURON = ("neuron", "neuron-block")


def needs_neuron_sdk(spec: str) -> bool:
    """Whether the candidate `spec` runs on the Neuron SDK (`neuron`, `neuron-block`, `neuron:...`, and
    their deployment variants `...@tpN`)."""
    from harness.neuron.config import split

    spec = split(spec)[0]
    return spec in NEURON or spec.partition(":")[0] == "neuron"


def load_candidate(spec: str) -> Candidate:
    """See `_load`; a candidate that ends the process while it is imported or built (sys.exit,
    os._exit) is refused as bad input instead of ending the run (harness/guard.py)."""
    from harness.guard import CandidateMisbehaved, process_kept

    try:
        with process_kept(f"candidate {spec!r}, while it was imported or built,"):
            return _load(spec)
    except CandidateMisbehaved as exc:
        raise ValueError(str(exc)) from None


def is_neuron(spec: str) -> bool:
    """Whether `spec` (without a variant suffix) names a Neuron candidate, which --neuron-config configures."""
    return spec == "nxdi-emulation" or needs_neuron_sdk(spec)


def _neuron_variant(spec: str, base: str, config: dict) -> Candidate:
    if not is_neuron(base):
        raise ValueError(f"candidate {spec!r}: a deployment (@tp...) applies to Neuron candidates only (nxdi-emulation, "
                         f"neuron, neuron-block, neuron:MODULE:CLASS); {base!r} is not one")
    from harness.neuron.candidate import NeuronCandidate, ShardedCandidate
    from harness.neuron.config import DEFAULT

    if config == DEFAULT:
        return _load(base)
    kind, class_path = ("emulation", None) if base == "nxdi-emulation" else (base, None) if base in NEURON else \
        ("class", base.partition(":")[2])
    if kind == "class" and class_path.count(":") != 1:
        raise ValueError(f"candidate {spec!r}: expected neuron:package.module:Class@tpN")
    if config["tp_degree"] == 1:
        return NeuronCandidate(kind, class_path=class_path, name=spec, config=config)
    return ShardedCandidate(config["tp_degree"], kind, class_path=class_path, name=spec, config=config)


def _load(spec: str) -> Candidate:
    """`spec` is a built-in name (see BUILTIN), `neuron` or `neuron-block` (harness/neuron),
    `neuron:package.module:Class` (a user's NeuronAttentionBase subclass), `mutant:NAME` or `benign:NAME`
    (the self-test's variants, harness/mutants.py), or `package.module:attribute`. A Neuron candidate
    without the SDK raises NeuronUnavailable (a ValueError naming the install line)."""
    from harness.neuron.config import split

    base, config = split(spec)
    if base != spec:  # a deployment variant (`nxdi-emulation@tp8`): Neuron candidates only
        return _neuron_variant(spec, base, config)
    kind, _, variant = spec.partition(":")
    if needs_neuron_sdk(spec):
        from harness.neuron.candidate import NeuronCandidate

        if spec in NEURON:
            return NeuronCandidate(spec)
        if variant.count(":") != 1:
            raise ValueError(f"candidate {spec!r}: expected neuron:package.module:Class, a NeuronAttentionBase subclass")
        return NeuronCandidate("class", class_path=variant)
    if kind in ("mutant", "benign"):
        from harness.mutants import variant as make_variant

        return make_variant(kind, variant)
    path = BUILTIN.get(spec, spec)
    module_name, _, attr = path.partition(":")
    if not (module_name and attr):
        raise ValueError(
            f"unknown candidate {spec!r}: use a built-in name ({', '.join(BUILTIN)}) or an import path "
            "'package.module:attribute'"
        )
    if "/" in module_name or "\\" in module_name or module_name.endswith(".py"):
        raise ValueError(f"candidate {spec!r}: {file_path_message(module_name, attr)}")
    obj = module = import_module(spec, module_name)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = f"module {module_name!r}" if obj is module else repr(f"{module_name}:{'.'.join(attr.split('.')[:i])}")
            raise ValueError(f"candidate {spec!r}: {owner} {missing_attribute_message(obj, part, module_name)}")
        obj = getattr(obj, part)
    return as_candidate(obj, name=spec)


def file_path_message(module_name: str, attr: str) -> str:
    """A file path given where a dotted module path goes (`mypkg/attn.py`): the dotted path, and where from."""
    path = PurePosixPath(module_name.replace("\\", "/"))
    path = path.with_suffix("") if path.suffix == ".py" else path
    if path.is_absolute() or ".." in path.parts:  # the package root is the first folder up without __init__.py
        folder, parts = Path(path.parent), [path.name]
        while (folder / "__init__.py").is_file():
            folder, parts = folder.parent, [folder.name, *parts]
        where = f"with PYTHONPATH={folder}"
    else:
        parts = [p for p in path.parts if p != "."]
        where = f"from the folder that holds {parts[0]}, with PYTHONPATH=."
    return (f"expected a dotted module path, package.module:attribute; found the file path {module_name!r}. "
            f"Use --candidate {'.'.join(parts)}:{attr} {where} (or after `pip install -e .` of your package)")


def import_module(spec: str, module_name: str):
    """The module, or a ValueError that tells a module not found from one that raised while importing."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ValueError(f"candidate {spec!r}: cannot import module {module_name!r}: "
                             f"{not_found_message(exc.name)}") from None
        raise ValueError(f"candidate {spec!r}: {import_failed_message(module_name, exc)}") from None
    except Exception as exc:  # noqa: BLE001 (the module's own code may raise anything while it is imported)
        raise ValueError(f"candidate {spec!r}: {import_failed_message(module_name, exc)}") from None


def not_found_message(missing: str) -> str:
    """Why `missing` was not found: a package without that module lists its modules; a top-level name
    gets the folders searched, and why the current folder may not be one of them."""
    parent, _, leaf = missing.rpartition(".")
    if parent in sys.modules:  # the package was imported: the module is what is missing, not a path
        folders = list(getattr(sys.modules[parent], "__path__", []))
        modules = [m.name for m in pkgutil.iter_modules(folders)]
        near = difflib.get_close_matches(leaf, modules, n=1)
        return (f"package {parent!r} ({', '.join(folders)}) has no module {leaf!r}"
                + (f"; did you mean {parent}.{near[0]}?" if near else ".") + f" Its modules: {', '.join(modules) or 'none'}")
    own = {os.path.realpath(p) for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    searched = [p or "." for p in sys.path if os.path.isdir(p or ".") and os.path.realpath(p or ".") not in own
                and os.path.basename(p) != "lib-dynload"]
    message = f"no module named {missing!r} in the folders searched ({', '.join(searched + ['the installed packages'])})"
    cwd = os.getcwd()
    if not any(os.path.realpath(p) == os.path.realpath(cwd) for p in searched):
        holds = (Path(cwd) / missing).is_dir() or (Path(cwd) / f"{missing}.py").is_file()
        message += (f". The current folder {'holds ' + missing + ' but ' if holds else ''}is not searched: it is on "
                    "the path only under `python -m`, not for the `parity` command")
    return message + f". Fix: run with PYTHONPATH=. from the folder that holds {missing}, or `pip install -e .` your package"


def import_failed_message(module_name: str, exc: BaseException) -> str:
    """The module exists but raised while importing: its exception and where, not a search-path hint."""
    where = f"{exc.filename}:{exc.lineno}" if isinstance(exc, SyntaxError) else next(
        (f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_tb(exc.__traceback__))
         if not f.filename.startswith("<")), "")
    return (f"module {module_name!r} was found but failed to import: {type(exc).__name__}: {exc}"
            + (f" (at {where})" if where else "") + "; fix the module, or install what it imports")


def missing_attribute_message(owner, name: str, module_name: str) -> str:
    """'has no attribute ...', the nearest name, and the names there that could be candidates."""
    members = vars(owner) if hasattr(owner, "__dict__") else {}
    names = [n for n, value in members.items() if not n.startswith("_") and could_be_candidate(value, module_name)]
    near = difflib.get_close_matches(name, names, n=3)
    listing = near + [n for n in names if n not in near]
    message = f"has no attribute {name!r}" + (f"; did you mean {near[0]!r}?" if near else ".")
    if not names:
        return message + " It defines no class, function or object with run() that could be a candidate"
    more = f" and {len(listing) - 15} more" if len(listing) > 15 else ""
    return message + f" It defines: {', '.join(listing[:15])}{more}"


def could_be_candidate(value, module_name: str) -> bool:
    """A class or function defined in the module (not imported into it), or any object with run()."""
    if inspect.ismodule(value):
        return False
    if not isinstance(value, type) and callable(getattr(value, "run", None)):
        return True
    return callable(value) and getattr(value, "__module__", None) == module_name
