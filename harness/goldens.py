"""The golden-tensor store: a case's expected tensors (oracle and reference, every layer), saved once
and checked on every load, so a device runner can judge a block without running the CPU reference and
two runs months apart compare against the same numbers.

A store is a folder: one safetensors file per golden (named after the case and the file's hash) and
manifest.json, which maps each case id to its golden's description (the case, the file, its size and
sha256, the reference fingerprint, versions, creation time, and every tensor's shape, dtype, sha256 and
statistics; see harness/golden_format.py for the tensors). Two stores are used: the committed one,
cases/goldens/ (curated cases, a size budget), and a local cache for generated cases
($PARITY_GOLDEN_CACHE, default ~/.cache/gpt-oss-parity/goldens).

Writing: the new tensor file is written under a new name (temporary file, fsync, rename), then the
manifest is replaced the same way, and only then is the old file removed, all under an exclusive
lock on the store's .lock file. A writer killed at any point leaves every golden the old one or the
new one (plus, at worst, a stray file the next writer removes). Readers take a shared lock.
Reading checks the manifest entry's own checksum, the file's size and sha256, the tensors against
the manifest, the fingerprint, and the weights and inputs the case generates today. No pickle: tensors
are safetensors, everything else JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import cpu
from harness.batch import layer_specs, make_batch
from harness.case import CASES_DIR, Case, curated_cases
from harness.expected import Expected, compute_expected
from harness.golden_format import (FORMAT, PREFIX_HASH, VERSION, TensorDiff, case_of_file, deserialise,
                                   diff_tensors, from_tensors, hash_tensor, header_metadata, oracle_dtype,
                                   reference_fingerprint, serialise, stats, tensor_sha256, to_tensors, weights_sha256)
from harness.jsonfile import parse_json, write_bytes, write_json
from harness.locations import running_from_checkout
from harness.repro import safe_name

try:
    import fcntl
except ImportError:  # not POSIX: no locking (Neuron hosts and CI are Linux)
    fcntl = None

COMMITTED_DIR = CASES_DIR / "goldens"
COMMITTED_BUDGET = 48 * 2**20  # bytes of tensor files in the committed store (it lives in git)
MANIFEST = "manifest.json"
ENTRY_KEYS = {"case", "file", "bytes", "sha256", "fingerprint", "weights_sha256", "tensors", "platform", "checksum"}


def committed_dir() -> Path:
    """The committed store: cases/goldens, or $PARITY_GOLDEN_DIR (e.g. a runner keeping goldens elsewhere)."""
    return Path(os.environ.get("PARITY_GOLDEN_DIR") or COMMITTED_DIR)


def cache_dir() -> Path:
    if os.environ.get("PARITY_GOLDEN_CACHE"):
        return Path(os.environ["PARITY_GOLDEN_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gpt-oss-parity" / "goldens"


class GoldenError(ValueError):
    """A golden that cannot be used; the message names it and the fix."""


class GoldenMissing(GoldenError):
    pass


class GoldenStale(GoldenError):
    pass


class GoldenCorrupt(GoldenError):
    pass


def _pause() -> None:
    """Crash tests only: PARITY_GOLDENS_PAUSE seconds at each step of a write, to be killed in."""
    seconds = float(os.environ.get("PARITY_GOLDENS_PAUSE") or 0)
    if seconds:
        time.sleep(seconds)


def _checksum(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import safetensors

    try:
        harness_version = version("gpt-oss-parity")
    except PackageNotFoundError:  # run from a checkout without installing
        harness_version = "unknown"
    return {"torch": torch.__version__, "python": platform.python_version(),
            "safetensors": safetensors.__version__, "gpt-oss-parity": harness_version}


@dataclass
class Change:
    """What a write did to one golden."""

    case_id: str
    status: str  # "new", "unchanged", "within rounding" (kept: other kernels, same reference), "re-stamped" (same tensors, other code), "changed", "replaced" (unreadable)
    diffs: list[TensorDiff] = field(default_factory=list)
    detail: str = ""

    def describe(self) -> str:
        if self.status != "changed":
            return f"{self.status}{': ' + self.detail if self.detail else ''}"
        return "changed: " + "; ".join(f"{d.name} {d.detail}" for d in self.diffs if d.changed)


# The fix for a damaged copy of the store installed with the package (never written by the harness).
REINSTALL = ("reinstall the package (`pip install --force-reinstall --no-deps gpt-oss-parity`, or the same "
             "requirement you installed it with): the installed store is never written")


class GoldenStore:
    """One folder of goldens. `budget`: the most bytes its tensor files may take (None: unlimited)."""

    def __init__(self, root: str | Path, budget: int | None = None, label: str | None = None,
                 read_only: str | None = None):
        self.root = Path(root)
        self.budget = budget
        self.label = label or str(self.root)
        self.read_only = read_only  # why this store is never written (None: it may be)
        if self.root.exists() and not self.root.is_dir():
            raise GoldenError(f"golden store {self.root} is a file, expected a folder (or a path where one can be "
                              "created): name another one with --dir, $PARITY_GOLDEN_DIR or $PARITY_GOLDEN_CACHE")

    @classmethod
    def committed(cls) -> GoldenStore:
        root = committed_dir()
        if root == COMMITTED_DIR and not running_from_checkout():
            # The copy installed with the package: its goldens belong to the version installed.
            return cls(root, COMMITTED_BUDGET, f"installed store {root}", read_only=(
                f"the committed store here is the copy installed with the package ({root}): its goldens are "
                "regenerated in a checkout of gpt-oss-parity and shipped with a release; for goldens of your own "
                "cases name a store of your own (`--dir DIR`, or `--cache`)"))
        label = "committed store cases/goldens" if root == COMMITTED_DIR else f"committed store {root}"
        return cls(root, COMMITTED_BUDGET, label)

    @classmethod
    def cache(cls) -> GoldenStore:
        return cls(cache_dir(), None, f"cache {cache_dir()}")

    @property
    def is_committed(self) -> bool:
        return self.root.resolve() == committed_dir().resolve()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # -- locking -----------------------------------------------------------------------------------
    def check_writable(self) -> None:
        if self.read_only:
            raise GoldenError(f"{self.label} is not written: {self.read_only}")

    @contextlib.contextmanager
    def _lock(self, exclusive: bool):
        if exclusive:
            self.check_writable()
        if fcntl is None or self.read_only:  # nobody writes a read-only store: no lock file in site-packages
            yield
            return
        try:
            if exclusive:
                self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".lock", "a+")  # noqa: SIM115 (held for the block's duration)
        except OSError:
            if exclusive:
                raise
            yield  # a read-only store (or none yet): nobody can be writing it
            return
        with handle:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process writing {self.label} ...", file=sys.stderr, flush=True)
                fcntl.flock(handle, mode)
            yield

    # -- manifest ----------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """{"format", "version", "goldens": {case id: entry}}; an empty one if the store has none yet."""
        p = self.manifest_path
        if not p.exists():
            return {"format": FORMAT, "version": VERSION, "goldens": {}}
        rebuild = (f"`parity goldens regenerate --rebuild{self._dir_option()}` (it moves the store's files aside, "
                   "deleting nothing, and writes every golden anew)")
        fix = (f"restore it{f' (`git checkout -- {p}`)' if self.is_committed else ''} or run {rebuild}"
               if not self.read_only else REINSTALL)
        try:
            data = parse_json(p.read_text(), f"golden manifest {p}")
        except ValueError as exc:  # not JSON, not text, or nested past what the harness parses
            raise GoldenCorrupt(f"{exc}; {fix}") from None
        if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("goldens"), dict)):
            raise GoldenCorrupt(f"golden manifest {p} is not a {FORMAT!r} manifest "
                                f"(expected an object with format and goldens); {fix}")
        if data.get("version") != VERSION:
            raise GoldenStale(f"golden manifest {p} has format version {data.get('version')}, this harness reads "
                              f"version {VERSION} (the store was written by another version of the harness); run "
                              f"{rebuild}")
        return data

    def _dir_option(self) -> str:
        """The option of `parity goldens regenerate` that writes this store. The installed copy is never
        written: its advice names the golden cache, where `--goldens` and `--no-reference` look next."""
        if self.read_only:
            return " --cache"
        if self.is_committed:
            return ""
        return " --cache" if self.root.resolve() == cache_dir().resolve() else f" --dir {self.root}"

    def regenerate_command(self, case: Case | None, case_file: str | None = None) -> str:
        """The command that writes the golden of `case`, or of every case in `case_file` when given."""
        select = f"--case-file {case_file}" if case_file else f"--case {case.id}"
        return f"parity goldens regenerate {select}{self._dir_option()}"

    def filed_case(self, case_id: str, entry) -> Case | None:
        """The case an entry is filed under, from its own record of it or, when that was edited away,
        from where the harness also wrote it down. None when nothing says; a case counts only if its id
        is `case_id` (an id ends in a hash of the whole case)."""
        for data in self._records_of(case_id, entry):
            try:
                case = Case.from_dict(data)
            except (ValueError, TypeError):
                continue
            if case.id == case_id:
                return case
        return None

    def _records_of(self, case_id: str, entry):
        """Each record of what case `case_id` is, most direct first, read as needed: the entry's case, the
        curated case of that id (the committed store), and the case in the header of the entry's tensor
        file and of any file named after `case_id` (should the entry's file name be edited too)."""
        yield entry.get("case") if isinstance(entry, dict) else entry
        if self.is_committed:
            yield from (c.to_dict() for c in curated_cases() if c.id == case_id)
        name = entry.get("file") if isinstance(entry, dict) else None
        files = [self.root / name] if isinstance(name, str) and Path(name).name == name else []  # the store's own
        for path in files + sorted(self.root.glob(f"{safe_name(case_id)}.*.safetensors")):
            try:
                yield case_of_file(path)
            except RecursionError:  # a header nested past what the parser takes
                continue

    def repair_advice(self, case_id: str, entry, case_file: str | None = None) -> str:
        """What repairs the store when the golden filed under `case_id` is unreadable: regenerating that
        case (regenerate replaces an unreadable entry), if the store or `case_file` still says what it
        was, else a rebuild from the store's tensor files (moved aside, nothing deleted). Regenerating
        the case a hand-edited entry names instead would leave the entry as it is."""
        if self.read_only:  # a golden in the cache would not help: a corrupt store is always an error
            return REINSTALL
        filed = self.filed_case(case_id, entry)
        if filed is not None or case_file:
            return f"run `{self.regenerate_command(filed, case_file)}`"
        if self.is_committed:
            return (f"restore the manifest (`git checkout -- {self.manifest_path}`) or run `parity goldens "
                    "regenerate --prune`, which rewrites every curated case's golden and drops the entries of other "
                    "cases")
        return (f"run `parity goldens regenerate --rebuild{self._dir_option()}`, which moves the store's files aside "
                "(deleting nothing) and writes anew the golden of every case their headers name")

    # -- reading -----------------------------------------------------------------------------------
    def entries(self) -> dict[str, dict]:
        with self._lock(exclusive=False):
            return self.read_manifest()["goldens"]

    def load(self, case: Case, case_file: str | None = None) -> list[Expected]:
        """The case's expected layers from this store, after every integrity and freshness check."""
        tensors, specs, batch = self.check(case, case_file)
        caches = [make_batch(case, spec).cache for spec in specs] if batch.cache is not None and len(specs) > 1 else None
        return from_tensors(tensors, specs, batch, teacher=case.stack_mode == "teacher", caches=caches)

    def check(self, case: Case, case_file: str | None = None):
        """(tensors, specs, batch) of the case's golden, or the GoldenError that says what is wrong."""
        with self._lock(exclusive=False):
            entry = self.read_manifest()["goldens"].get(case.id)
            if entry is None:
                raise GoldenMissing(f"no golden for case {case.id} in {self.label}; create it with "
                                    f"`{self.regenerate_command(case, case_file)}`")
            tensors = self._read_tensors(case.id, entry, case_file)
        return (tensors, *self._check_current(case, entry, tensors, case_file))

    def check_stored(self, case_id: str) -> None:
        """What can be checked from the store alone, without rebuilding the case's weights or inputs
        (seconds for a 131,072-token case): the entry's checksum, the tensor file's size and sha256,
        each tensor's sha256, and the reference fingerprint. `check` adds the comparison with what the
        case's seeds build today (`parity goldens verify` recomputes the reference too)."""
        with self._lock(exclusive=False):
            entry = self.read_manifest()["goldens"].get(case_id)
            if entry is None:
                raise GoldenMissing(f"no golden for case {case_id} in {self.label}")
            self._read_tensors(case_id, entry)
        current = reference_fingerprint()
        if entry["fingerprint"] != current:
            case = Case.from_dict(entry["case"])
            raise GoldenStale(f"golden {case_id} in {self.label} is stale: written by reference fingerprint "
                              f"{entry['fingerprint']}, the reference code is now {current}; regenerate it with "
                              f"`{self.regenerate_command(case)}`")

    def _read_tensors(self, case_id: str, entry, case_file: str | None = None) -> dict[str, torch.Tensor]:
        """The golden's tensors, after checking its manifest entry, its file's size and sha256, and that
        file and entry describe the same tensors."""
        valid = isinstance(entry, dict) and _valid_case(entry.get("case"))
        fix = self.repair_advice(case_id, entry, case_file)
        where = f"golden {case_id} in {self.label}"
        if not isinstance(entry, dict) or entry.get("checksum") != _checksum(entry):
            raise GoldenCorrupt(f"{where}: its manifest entry in {self.manifest_path} was edited (its checksum does "
                                f"not match its content); {fix}")
        missing = sorted(ENTRY_KEYS - set(entry))
        if missing or not valid or Case.from_dict(entry["case"]).id != case_id:
            raise GoldenCorrupt(f"{where}: its manifest entry is not one this harness wrote (missing {missing}, or a "
                                f"case that is invalid or filed under another id); {fix}")
        path = self.root / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise GoldenCorrupt(f"{where}: its tensor file {path} is missing; {fix}") from None
        if len(data) != entry["bytes"]:
            raise GoldenCorrupt(f"{where}: {path} has {len(data)} bytes, the manifest says {entry['bytes']} "
                                f"(truncated or overwritten); {fix}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise GoldenCorrupt(f"{where}: {path} does not match its sha256 in the manifest (corrupted); {fix}")
        try:
            tensors = deserialise(data)
            meta = json.loads(header_metadata(data).get("golden", "{}"))
        except Exception as exc:  # safetensors raises its own error types for a malformed header
            raise GoldenCorrupt(f"{where}: {path} is not a readable safetensors file ({exc}); {fix}") from None
        if meta.get("case") != entry["case"]:
            raise GoldenCorrupt(f"{where}: {path} was written for another case than its manifest entry says; {fix}")
        described = entry["tensors"]
        if set(tensors) != set(described):
            raise GoldenCorrupt(f"{where}: {path} holds tensors {sorted(tensors)}, the manifest lists "
                                f"{sorted(described)}; {fix}")
        for name, t in tensors.items():
            want = described[name]
            if list(t.shape) != want.get("shape") or str(t.dtype)[6:] != want.get("dtype"):
                raise GoldenCorrupt(f"{where}: tensor {name} is {tuple(t.shape)} {str(t.dtype)[6:]}, the manifest "
                                    f"says {tuple(want.get('shape') or ())} {want.get('dtype')}; {fix}")
            if tensor_sha256(t) != want.get("sha256"):
                raise GoldenCorrupt(f"{where}: tensor {name} in {path} does not match its sha256 in the manifest "
                                    f"(its values were altered); {fix}")
        return tensors

    def _check_current(self, case: Case, entry: dict, tensors: dict, case_file: str | None):
        """Check the golden still describes what the case means today; the case's specs and batch."""
        fix = f"regenerate it with `{self.regenerate_command(case, case_file)}`"
        where = f"golden {case.id} in {self.label}"
        current = reference_fingerprint()
        if entry["fingerprint"] != current:
            raise GoldenStale(f"{where} is stale: written by reference fingerprint {entry['fingerprint']}, the "
                              f"reference code is now {current} (reference/, harness/produce.py or harness/prefix.py changed); {fix}")
        specs = layer_specs(case)
        batch = make_batch(case, specs[0])
        if [weights_sha256(s.weights) for s in specs] != entry["weights_sha256"]:
            raise GoldenStale(f"{where} is stale: the weights the case's seeds generate today differ from those "
                              f"it was computed with (harness/weights.py or torch's generator changed); {fix}")
        stored = tensors["inputs.hidden"]
        if stored.shape != batch.hidden.shape or stored.dtype != batch.hidden.dtype:
            raise GoldenStale(f"{where} is stale: its input is {tuple(stored.shape)} {stored.dtype}, the case now "
                              f"builds {tuple(batch.hidden.shape)} {batch.hidden.dtype}; {fix}")
        if not torch.equal(stored, batch.hidden):
            raise GoldenStale(f"{where} is stale: the inputs the case's seeds generate today differ from the stored "
                              f"ones (harness/batch.py or torch's generator changed); {fix}")
        if batch.cache is not None and not torch.equal(tensors.get(PREFIX_HASH, torch.empty(0)),
                                                       hash_tensor(batch.cache.inputs_sha256)):
            raise GoldenStale(f"{where} is stale: the inputs of the cached prefix the case's seeds generate today "
                              f"differ from those it was computed with (their sha256 differs); {fix}")
        return specs, batch

    # -- writing -----------------------------------------------------------------------------------
    def write(self, case: Case, layers: list[Expected], force: bool = False) -> Change:
        """Store (or replace) the case's golden; returns what changed and by how much. A golden whose
        recomputation differs from it by platform rounding only is kept as it is (re-stamped if the
        reference code changed), so that regenerating on another CPU does not churn the store;
        `force` replaces it anyway."""
        tensors, omitted = to_tensors(layers, teacher=case.stack_mode == "teacher")
        fingerprint = reference_fingerprint()
        # One metadata key (safetensors writes its metadata map in no fixed order) and nothing that changes
        # when the tensors do not (no fingerprint, no time): the same tensors give the same bytes, so a
        # re-stamped golden adds nothing to git but its manifest entry.
        data = serialise(tensors, {"golden": json.dumps({"format": FORMAT, "case": case.to_dict()}, sort_keys=True)})
        digest = hashlib.sha256(data).hexdigest()
        entry = {
            "case": case.to_dict(),
            "file": f"{safe_name(case.id)}.{digest[:12]}.safetensors",
            "bytes": len(data),
            "sha256": digest,
            "fingerprint": fingerprint,
            "versions": _versions(),
            "platform": cpu.describe(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "layers": len(layers),
            "oracle_dtype": str(oracle_dtype(layers[0].spec.dtype))[6:],
            "omitted": omitted,
            "weights_sha256": [weights_sha256(e.spec.weights) for e in layers],
            "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype)[6:], "sha256": tensor_sha256(t),
                               "stats": stats(t)} for name, t in sorted(tensors.items())},
        }
        entry["checksum"] = _checksum(entry)
        with self._lock(exclusive=True):
            manifest = self.read_manifest()
            goldens = manifest["goldens"]
            old = goldens.get(case.id)
            change = self._change(case, old, tensors)
            if force and change.status == "within rounding":
                change = Change(case.id, "changed", change.diffs)
            if change.status in ("unchanged", "within rounding"):
                if old["fingerprint"] == fingerprint:
                    self._collect_garbage(goldens)
                    return change  # the same tensors from the same reference: keep the entry (and its history)
                if change.status == "within rounding":  # keep the stored tensors, with the new fingerprint
                    entry = {k: v for k, v in old.items() if k != "checksum"} | {"fingerprint": fingerprint}
                    entry["checksum"] = _checksum(entry)
                change = Change(case.id, "re-stamped", change.diffs,
                                f"the same tensors{' (within platform rounding)' if change.status == 'rounding' else ''}, "
                                f"now from reference fingerprint {fingerprint} (was {old['fingerprint']})")
            if self.budget is not None:
                others = sum(e["bytes"] for cid, e in goldens.items() if cid != case.id)
                if others + entry["bytes"] > self.budget:
                    raise GoldenError(
                        f"golden {case.id} ({len(data) / 2**20:.1f} MiB) would take {self.label} to "
                        f"{(others + len(data)) / 2**20:.1f} MiB, over its budget of {self.budget / 2**20:.0f} MiB; "
                        "judge fewer rows (compare_last), shorten the case, or keep it in a case file outside cases/ "
                        "(its golden then goes to the local cache). Nothing was written")
            path = self.root / entry["file"]
            if not _holds(path, data):  # a file of this name may be a damaged copy: the name proves nothing
                write_bytes(path, data, pause=_pause)
                _pause()
            goldens[case.id] = entry
            write_json(self.manifest_path, manifest, pause=_pause)
            _pause()
            self._collect_garbage(goldens)
        return change

    def remove(self, case_ids: list[str]) -> None:
        with self._lock(exclusive=True):
            manifest = self.read_manifest()
            for cid in case_ids:
                manifest["goldens"].pop(cid, None)
            write_json(self.manifest_path, manifest)
            self._collect_garbage(manifest["goldens"])

    def _change(self, case: Case, old: dict | None, tensors: dict) -> Change:
        if old is None:
            return Change(case.id, "new")
        try:
            before = self._read_tensors(case.id, old)
        except GoldenError as exc:
            return Change(case.id, "replaced", detail=f"the old golden was unreadable ({exc})")
        diffs = [d for d in diff_tensors(before, tensors) if d.changed]
        if not diffs:
            return Change(case.id, "unchanged")
        if all(d.accepted for d in diffs):
            return Change(case.id, "within rounding", diffs, f"kept as stored: the recomputed tensors differ from the stored ones by "
                                                      f"platform rounding only (stored on {cpu.summary(old.get('platform'))})")
        return Change(case.id, "changed", diffs)

    def _collect_garbage(self, goldens: dict) -> None:
        """Under the exclusive lock: files no entry refers to are leftovers of replaced goldens or of
        writers killed mid-write (nobody else can be writing)."""
        keep = {e["file"] for e in goldens.values()} | {MANIFEST, ".lock"}
        for p in self.root.iterdir():
            if p.is_file() and p.name not in keep and (p.suffix == ".safetensors" or p.name.startswith(".tmp-")):
                p.unlink(missing_ok=True)

    def move_aside(self) -> Path | None:
        """For --rebuild: move the manifest and every tensor file into replaced-<UTC time>/ inside the store
        (nothing is deleted); returns that folder, or None when there was nothing to move."""
        with self._lock(exclusive=True):
            files = [p for p in self.root.iterdir() if p.is_file() and (p.name == MANIFEST or p.suffix == ".safetensors")]
            if not files:
                return None
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
            aside = self.root / f"replaced-{stamp}"
            aside.mkdir()
            for p in files:
                p.rename(aside / p.name)
            return aside

    def stray_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        keep = {e["file"] for e in self.entries().values()} | {MANIFEST, ".lock"}
        return [p for p in self.root.iterdir() if p.is_file() and p.name not in keep]

    def size(self) -> int:
        return sum(e["bytes"] for e in self.entries().values())


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at `path` holds exactly `data`."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _valid_case(data) -> bool:
    try:
        Case.from_dict(data)
    except (ValueError, TypeError):
        return False
    return True


@dataclass
class GoldenSource:
    """Expected tensors for the runner (an ExpectedFn) taken from golden stores.

    Each store in `stores` is tried in order. With `compute` (the default), a case none of them holds
    is computed and written to `cache`; a stale golden is reported through `log` and recomputed, never
    used. Without `compute` (the reference disabled, as on a device runner), a missing or stale golden
    is an error naming the regenerate command. A corrupted golden is always an error."""

    stores: list[GoldenStore]
    cache: GoldenStore | None = None
    compute: bool = True
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)
    case_files: dict[str, str] = field(default_factory=dict)  # case id -> the case file it came from
    loaded: int = 0
    computed: int = 0

    @classmethod
    def stores(cls, compute: bool = True, case_files: dict[str, str] | None = None) -> GoldenSource:
        """The committed store, then the local cache (where computed goldens go)."""
        cache = GoldenStore.cache()
        return cls([GoldenStore.committed(), cache], cache=cache, compute=compute, case_files=case_files or {})

    def __call__(self, case: Case, checkpoint: str | None = None) -> list[Expected]:
        if checkpoint is not None or case.checkpoint:
            raise GoldenError("goldens hold the seeded weights of their cases; a run with --checkpoint computes its "
                              "expected tensors (leave out --goldens / --no-reference)")
        case_file = self.case_files.get(case.id)
        problems = []
        for store in self.stores:
            try:
                layers = store.load(case, case_file)
            except GoldenMissing as exc:
                problems.append(exc)
                continue
            except GoldenStale as exc:
                if not self.compute:
                    raise
                self.log(f"{exc}\n  (recomputing it)")
                continue
            self.loaded += 1
            return layers
        if not self.compute:
            raise problems[0] if problems else GoldenMissing(f"no golden store holds case {case.id}")
        layers = compute_expected(case)
        self.computed += 1
        if self.cache is not None:
            self.cache.write(case, layers)
        return layers
