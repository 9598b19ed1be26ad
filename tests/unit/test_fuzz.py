"""Fuzzing (hypothesis) of what reads user input: the recipe loader, the spec files it reads
(hypervisor/, kernel_patches/), pinned source specs, the patch-series parser and the CLI.

The contract: every input ends in success or in a located user error - a ValidationFailed
whose problems name a file (and a line and field where there is one), an InputError, or
on the command line exit code 2 with such a message - never a traceback, never "internal
error" (exit 1), never a hang. Each case runs under a hard time limit (an alarm) besides
hypothesis's deadline; the subprocess cases under a timeout.

CI runs a fixed (derandomized) sample of a few thousand cases. The full, random run::

    XENFORGE_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/unit/test_fuzz.py

shares the examples out over the targets (see WEIGHTS). Hypothesis keeps no database and
no ``.hypothesis/`` folder in the repository (its home is a temporary folder).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

# hypothesis's home (its constants cache, ...) outside the repository, set before its first
# use; not created here (hypothesis makes it when it writes), removed at the end
from hypothesis import configuration as _hypothesis_configuration

HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / f"xenforge-fuzz-hypothesis-{os.getpid()}"
_hypothesis_configuration.set_hypothesis_home_dir(HYPOTHESIS_HOME)

import recipe_strategies as rs  # noqa: E402  (tests/helpers)
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xenforge.cli import app as cli  # noqa: E402
from xenforge.core.errors import InputError, Problem, ValidationFailed  # noqa: E402
from xenforge.lib.patches import read_series, series_files, unlisted_patches  # noqa: E402
from xenforge.plan import plan  # noqa: E402
from xenforge.recipe.load import load_recipe  # noqa: E402
from xenforge.sources import specs as source_specs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
BROKEN = REPO / "tests" / "recipes" / "broken"
XENFORGE = REPO / ".venv" / "bin" / "xenforge"

# -- how many cases ------------------------------------------------------------------------

#: the full run's total (0: CI's fixed sample)
FULL = int(os.environ.get("XENFORGE_FUZZ_EXAMPLES", "0") or 0)
#: each target's share of the full run, and its CI sample
WEIGHTS = {"recipes": 0.34, "raw": 0.10, "specs": 0.12, "shipped": 0.06, "sources": 0.12,
           "series": 0.12, "argv": 0.12, "subprocess": 0.02}
CI_EXAMPLES = {"recipes": 600, "raw": 300, "specs": 250, "shipped": 150, "sources": 300,
               "series": 300, "argv": 300, "subprocess": 16}
#: seconds a case may take before it counts as a hang (in process; subprocesses get more)
CASE_LIMIT = 20
SUBPROCESS_LIMIT = 60


def examples(target: str) -> int:
    return max(1, int(FULL * WEIGHTS[target])) if FULL else CI_EXAMPLES[target]


def fuzz(target: str, *, deadline_ms: int | None = 10_000) -> settings:
    """The settings of one target: CI's are derandomized (the same cases every run), the
    full run's random; never a database."""
    return settings(max_examples=examples(target), derandomize=not FULL, database=None,
                    deadline=deadline_ms, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


#: cases run and how they ended, per target (printed at the end of the module)
OUTCOMES: dict[str, Counter[str]] = {t: Counter() for t in WEIGHTS}

# -- the contract --------------------------------------------------------------------------


class Hang(Exception):
    """A case ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """A hard limit: SIGALRM interrupts whatever the case is doing."""
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"the case ran longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _lines(file: Path) -> int | None:
    """How many lines ``file`` has (by any line break YAML or str.splitlines knows)."""
    try:
        if not file.is_file() or file.stat().st_size > 1 << 21:
            return None
        text = file.read_bytes().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    return max(len(text.splitlines()), len(re.split(r"\r\n|[\n\r\x85\u2028\u2029]", text))) + 1


def check_problems(problems: list[Problem]) -> None:
    """Every problem names a file, a line within it (or none) and says something."""
    assert problems, "a ValidationFailed without problems"
    for p in problems:
        assert isinstance(p.file, Path), p
        assert isinstance(p.message, str) and p.message.strip(), p
        assert isinstance(p.path, str), p
        if p.line is not None:
            assert isinstance(p.line, int) and p.line >= 1, p
            n = _lines(p.file)
            assert n is None or p.line <= n, f"{p}: line {p.line} of a {n}-line file"
        text = p.render()
        assert "Traceback" not in text and "internal error" not in text


def check_cli_output(code: int | str | None, out: str, err: str) -> None:
    """Exit 0 or 2, never a traceback or an internal error; an error names what is wrong."""
    assert "Traceback" not in out + err, err
    assert "internal error" not in err, err
    assert code in (0, 2), f"exit code {code}: {err}"
    if code == 2:
        assert err.strip(), "exit 2 without a message"


def run_cli(argv: list[str]) -> tuple[int | str | None, str, str]:
    """``xenforge ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str | None = cli.main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code
    return code, out.getvalue(), err.getvalue()


# -- the world the cases live in -----------------------------------------------------------


class World:
    """A temporary folder: ``fixtures/`` (a copy of tests/recipes/fixtures), ``case/`` (the
    files of the current case), a cache and a state folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.case = root / "case"
        shutil.copytree(FIXTURES, root / "fixtures", symlinks=True)
        shutil.copytree(BROKEN, root / "broken", symlinks=True)
        for folder in ("hypervisor", "kernel_patches"):  # the shipped specs, to damage
            shutil.copytree(REPO / folder, root / "repo" / folder, symlinks=True)
        shutil.copytree(REPO / "kernel_patches" / "linux-6.12",
                        root / "repo" / "kernel_patches" / "fuzz-line")
        self.cache = root / "cache"
        os.mkfifo(root / "fifo")  # `ci -o fifo` must not replace it

    def write(self, files: dict[str, bytes]) -> Path:
        """Replace the case folder's files; the path of its recipe.yaml."""
        if self.case.exists():
            shutil.rmtree(self.case)
        self.case.mkdir()
        for name, data in files.items():
            path = self.case / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return self.case / "recipe.yaml"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="xenforge-fuzz-"))
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith(("XENFORGE_REMOTE_CACHE", "XENFORGE_SIGNING")):
                mp.delenv(var)
        mp.setenv("XENFORGE_CACHE_DIR", str(root / "cache"))
        mp.setenv("XENFORGE_STATE_DIR", str(root / "state"))
        mp.chdir(root)  # `xenforge ci` writes its file here
        try:
            yield World(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """Print how the cases ended; keep no hypothesis folder anywhere."""
    start = time.monotonic()
    yield
    wall = time.monotonic() - start
    total = sum(sum(c.values()) for c in OUTCOMES.values())
    lines = [f"fuzz: {total} cases in {wall:.1f}s"]
    for target, counts in OUTCOMES.items():
        lines.append(f"  {target:<11} {sum(counts.values()):>6}  " + ", ".join(
            f"{k} {v}" for k, v in sorted(counts.items())))
    report = os.environ.get("XENFORGE_FUZZ_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    shutil.rmtree(HYPOTHESIS_HOME, ignore_errors=True)
    assert not (REPO / ".hypothesis").exists(), "hypothesis left .hypothesis/ in the repo"


# -- the loader, in process ----------------------------------------------------------------


def load_and_plan(world: World, recipe: Path, target: str) -> str:
    """Load ``recipe``; if it loads, plan it; then the same through ``xenforge validate`` and
    ``xenforge plan`` in process. How it ended."""
    with time_limit(CASE_LIMIT):
        try:
            loaded = load_recipe(recipe)
        except ValidationFailed as exc:
            check_problems(exc.problems)
            code, out, err = run_cli(["validate", str(recipe)])
            check_cli_output(code, out, err)
            assert code == 2, f"load_recipe failed but validate said ok: {out}"
            first = exc.problems[0].render().splitlines()[0]  # FILE[:LINE]: [FIELD:] ...
            assert first in err, f"{first!r} not in {err!r}"
            OUTCOMES[target]["rejected"] += 1
            return "rejected"
        check_accepted(loaded)
        if any(system_tree(src, world) for src in sources_of(loaded)):
            OUTCOMES[target]["system tree"] += 1
            return "system tree"
        try:
            plan(loaded)
            planned = True
        except ValidationFailed as exc:  # a patch series the loader does not read
            check_problems(exc.problems)
            planned = False
        code, out, err = run_cli(["plan", "--no-remote-cache", "--cache-dir",
                                  str(world.cache), str(recipe)])
        check_cli_output(code, out, err)
        assert (code == 0) == planned, err
    outcome = "planned" if planned else "bad series"
    OUTCOMES[target][outcome] += 1
    return outcome


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sources_of(loaded: Any) -> list[Any]:
    """Every pinned source a loaded recipe (and its guests) names."""
    out = []
    for ld in [loaded, *loaded.guests.values()]:
        out += [s for s in (ld.recipe.hypervisor.source if ld.recipe.hypervisor else None,
                            ld.hypervisor_spec.source if ld.hypervisor_spec else None,
                            *(k.source for k in ld.recipe.kernels.values()),
                            *(line.source for line in ld.kernel_lines.values()))
                if s is not None]
    return out


def check_accepted(loaded: Any) -> None:
    """What validate accepts holds no control characters where they would reach a file
    xenforge writes (debian/control, an argv), and its pins match Debian policy."""
    for ld in [loaded, *loaded.guests.values()]:
        assert not _CONTROL.search(ld.recipe.maintainer), ld.recipe.maintainer
    for s in sources_of(loaded):
        check_source(s)


def system_tree(source: Any, world: World) -> bool:
    """A path source naming the world's folder or above it (``path: /``, ``..``): hashing it
    would read the whole machine (/proc/kmsg blocks) - a slow recipe, not a bug to find."""
    if not isinstance(source, source_specs.PathSource):
        return False
    p = source.path.absolute()
    return p == Path("/") or world.root.is_relative_to(p) or \
        p.parts[1:2] in (("proc",), ("sys",), ("dev",))


def check_source(s: Any) -> None:
    for value in s.model_dump().values():
        if isinstance(value, str):
            assert not _CONTROL.search(value), f"{s!r} holds a control character"
    if isinstance(s, source_specs.AptSource | source_specs.DebSource):
        pin = s.apt if isinstance(s, source_specs.AptSource) else s.deb
        assert source_specs._PINNED.fullmatch(pin), pin
    sha = getattr(s, "sha256", None)
    assert sha is None or re.fullmatch(r"[0-9a-f]{64}", sha), sha


#: shrunk reproductions of what the fuzzing found (each was an internal error before)
RECIPE_EXAMPLES = {
    "bad date": b"schema: 1\ndescription: 2024-13-45\n",
    "!!float abc": b"schema: 1\ndescription: !!float abc\n",
    "!!bool maybe": b"schema: 1\nname: !!bool maybe\n",
    "!!timestamp abc": b"schema: 1\nepoch: !!timestamp abc\n",
    "timezone +25:00": b"schema: 1\ndescription: 2024-01-01T00:00:00+25:00\n",
    "4400 digits": b"schema: 1\nepoch: " + b"1" * 4400 + b"\n",
    "4000 hex digits": b"schema: 1\ndescription: 0x" + b"f" * 4000 + b"\n",
    "deep nesting": b"schema: 1\ndescription: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "NUL byte": b"schema: 1\ndescription: a\x00b\n",
    "Latin-1": b"schema: 1\ndescription: caf\xe9\n",
    "lone surrogate": b'schema: 1\ndescription: "\\ud800"\n',
    "long extends": b"schema: 1\nextends: [" + b"e" * 300 + b".yaml]\n",
    "long fragment": b"schema: 1\nkernels: {dom0: {line: ../fixtures/kernel_patches/mini, "
                     b"fragments: [" + b"f" * 300 + b".config]}}\n",
    "long path source": b"schema: 1\nkernels: {dom0: {line: ../fixtures/kernel_patches/mini, "
                        b"source: {path: " + b"p" * 300 + b"}}}\n",
    "size 1": b"schema: 1\nimages: {g: {role: guest, size: 1}}\n",
    "size -5": b"schema: 1\nimages: {g: {role: guest, size: -5}}\n",
    "huge size": b"schema: 1\nimages: {g: {role: guest, size: 0x" + b"f" * 100 + b"}}\n",
    "maintainer newline": b'schema: 1\nmaintainer: "A <a@b.org>\\n"\n',
}


@pytest.mark.parametrize("data", RECIPE_EXAMPLES.values(), ids=RECIPE_EXAMPLES.keys())
def test_found_recipe_defects_stay_fixed(world: World, data: bytes) -> None:
    assert load_and_plan(world, world.write({"recipe.yaml": data}), "recipes") == "rejected"


def _mutated(host: dict[tuple[str | int, ...], Any],
             guest: dict[tuple[str | int, ...], Any] | None = None) -> dict[str, bytes]:
    """The files of VALID_HOST and VALID_GUEST with these fields set."""
    files = {}
    for name, data, changes in (("recipe.yaml", rs.VALID_HOST, host),
                                ("guest.yaml", rs.VALID_GUEST, guest or {})):
        for path, value in changes.items():
            data = rs._set(data, path, value)
        files[name] = (rs.to_yaml(data) + "\n").encode()
    return files


@pytest.mark.parametrize("host,guest,outcome", [
    ({}, {}, "planned"),
    ({("guests", 1, "name"): "web_2"}, {}, "rejected"),  # the disk stage's host name
    ({("guests", 1, "name"): "web_2", ("guests", 1, "hostname"): "web-2"}, {}, "planned"),
    ({}, {("images", "guest", "size"): "255M"}, "rejected"),  # the rootfs stage's minimum
    ({("guests", 0, "type"): "hvm"},
     {("images", "guest", "size"): "64M", ("images", "guest", "bootloader"): True}, "planned"),
    ({("images", "xen-host", "size"): "16385G"}, {}, "rejected"),
], ids=["valid", "guest name no host name", "with a host name", "guest fs 255M",
        "guest disk 64M", "17 TiB"])
def test_found_plan_defects_stay_fixed(world: World, host: dict[tuple[str | int, ...], Any],
                                       guest: dict[tuple[str | int, ...], Any],
                                       outcome: str) -> None:
    """What validate took and plan crashed on (a raw pydantic error of a stage's options)."""
    assert load_and_plan(world, world.write(_mutated(host, guest)), "recipes") == outcome


@fuzz("recipes")
@given(case=st.one_of(rs.cases(), rs.mutated_cases()))
def test_recipes(world: World, case: rs.Case) -> None:
    """Recipes of the real shapes, with mistakes, their bases, guests, specs and series;
    and a valid recipe using every section with a few fields changed."""
    load_and_plan(world, world.write(case.files), "recipes")


@fuzz("raw")
@given(data=rs.raw_yaml())
@example(data=b"\xff\xfe\x00")
@example(data=b"schema: 1\n\x00")
def test_raw_bytes(world: World, data: bytes) -> None:
    """Garbage and YAML-looking text as a recipe."""
    load_and_plan(world, world.write({"recipe.yaml": data}), "raw")


def _spec_recipe(spec: str, line: str) -> bytes:
    """A valid recipe but for the Xen spec or kernel line it names (the ones fuzzed)."""
    return (rs.to_yaml({
        "schema": 1, "name": "specs",
        "hypervisor": {"spec": spec},
        "kernels": {"dom0": {"line": line, "fragments": ["base"]}},
        "images": {"d": {"role": "dom0", "kernel": "dom0", "size": "2G"}}}) + "\n").encode()


@fuzz("specs")
@given(which=st.sampled_from(["hypervisor", "line"]), spec=rs.hypervisor_spec_data(0.05),
       line=rs.kernel_line_data(0.05), series=rs.series_lines(), damage=st.integers(0, 7))
@example(which="hypervisor", spec={"schema": 1, "name": "x", "version": "4.17.5",
                                   "source": {"path": "../fixtures/src/xen-mini-4.17.5.tar.gz"},
                                   "toolstack": {"configure": ["no-dashes"]}},
         line={}, series=b"", damage=1)
def test_spec_files(world: World, which: str, spec: dict[str, Any], line: dict[str, Any],
                    series: bytes, damage: int) -> None:
    """hypervisor/NAME.yaml or kernel_patches/LINE/line.yaml (with its series and patches)
    through a recipe that is otherwise valid."""
    fixture_spec, fixture_line = "../fixtures/hypervisor/xen-mini.yaml", \
        "../fixtures/kernel_patches/mini"
    files = {"x.config": b"CONFIG_X=y\n", "line/x.config": b"CONFIG_Y=y\n",
             "line/series": series, "patches/series": series,
             "line/0001-a.patch": b"--- a/x\n+++ b/x\n",
             "patches/0001-a.patch": b"--- a/x\n+++ b/x\n"}
    if which == "hypervisor":
        fuzzed = files["spec.yaml"] = (rs.to_yaml(spec) + "\n").encode()
        files["recipe.yaml"] = _spec_recipe("spec.yaml", fixture_line)
    else:
        fuzzed = files["line/line.yaml"] = (rs.to_yaml(line) + "\n").encode()
        files["recipe.yaml"] = _spec_recipe(fixture_spec, "line")
    if damage == 0:  # a YAML mistake in the spec
        fuzzed = fuzzed.replace(b":", b"", 1)
        files["spec.yaml" if which == "hypervisor" else "line/line.yaml"] = fuzzed
    load_and_plan(world, world.write(files), "specs")


REAL_SPEC = (REPO / "hypervisor" / "xen-4.20.yaml").read_bytes()
REAL_LINE = (REPO / "kernel_patches" / "linux-6.12" / "line.yaml").read_bytes()


@fuzz("shipped")
@given(which=st.sampled_from(["hypervisor", "line"]),
       spec=rs.damage(REAL_SPEC), line=rs.damage(REAL_LINE))
def test_shipped_spec_files_damaged(world: World, which: str, spec: bytes, line: bytes
                                    ) -> None:
    """hypervisor/xen-4.20.yaml and kernel_patches/linux-6.12/line.yaml with bytes inserted,
    deleted or replaced (in a copy of their folders, so what they name is there)."""
    repo = world.root / "repo"
    (repo / "hypervisor" / "fuzz-spec.yaml").write_bytes(
        spec if which == "hypervisor" else REAL_SPEC)
    (repo / "kernel_patches" / "fuzz-line" / "line.yaml").write_bytes(
        line if which == "line" else REAL_LINE)
    recipe = _spec_recipe("../repo/hypervisor/fuzz-spec.yaml", "../repo/kernel_patches/fuzz-line")
    load_and_plan(world, world.write({"recipe.yaml": recipe}), "shipped")


# -- pinned sources ------------------------------------------------------------------------


def _python_value(value: Any) -> Any:
    """A strategy value as plain Python data (Raw YAML text as the string it spells)."""
    if isinstance(value, rs.Raw):
        return value.text
    if isinstance(value, dict):
        return {_python_value(k): _python_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_python_value(v) for v in value]
    return value


@fuzz("sources", deadline_ms=5_000)
@given(data=rs.sources(), base=st.sampled_from([None, "fixtures"]))
@example(data={"path": "p" * 300}, base=None)
@example(data={"apt": "hello=1.0\n"}, base=None)
@example(data={"url": "https://h/x", "sha256": "0" * 64 + "\n"}, base=None)
@example(data={"url": "https://example.org/a%2F..%2Fb", "sha256": "0" * 64}, base=None)
@example(data={"path": "/dev/zero"}, base=None)  # hashing it never ended
@example(data={"url": "https://h/a\nb", "sha256": "0" * 64}, base=None)
def test_parse_source(world: World, data: Any, base: str | None) -> None:
    """xenforge.sources.specs.parse_source: a source spec or an InputError."""
    with time_limit(CASE_LIMIT):
        try:
            spec = source_specs.parse_source(_python_value(data),
                                             world.root / base if base else None)
        except InputError as exc:
            assert exc.message.strip()
            OUTCOMES["sources"]["rejected"] += 1
            return
        check_source(spec)
        spec.describe()
        if system_tree(spec, world):
            OUTCOMES["sources"]["system tree"] += 1
            return
        spec.identity()  # (a path source's content hash)
        OUTCOMES["sources"]["accepted"] += 1


# -- patch series --------------------------------------------------------------------------


@fuzz("series", deadline_ms=5_000)
@given(series=rs.series_lines(), present=st.integers(0, len(rs.PATCHES)))
@example(series=b"0001-a.patch -p" + b"9" * 5000 + b"\n", present=1)
@example(series=b"\xff\n", present=0)
@example(series=b"a\x00b\n", present=0)
@example(series=b"n" * 300 + b"\n", present=0)
@example(series=b"x\x0c0001-a.patch\n", present=1)
def test_series(world: World, series: bytes, present: int) -> None:
    """read_series, series_files and unlisted_patches: entries or a ValidationFailed whose
    problems name the series file and line."""
    folder = world.write({"recipe.yaml": b"", "p/series": series,
                          **{f"p/{n}": b"--- a/x\n+++ b/x\n" for n in rs.PATCHES[:present]}}
                         ).parent / "p"
    with time_limit(CASE_LIMIT):
        try:
            entries = read_series(folder)
        except ValidationFailed as exc:
            check_problems(exc.problems)
            for p in exc.problems:
                assert p.file in (folder / "series", folder), p
                assert p.line is not None or p.file == folder, p
            OUTCOMES["series"]["rejected"] += 1
            return
        lines = series.decode("utf-8").split("\n")
        for e in entries:
            assert e.path.is_file() and e.path.resolve().is_relative_to(folder.resolve())
            assert e.name in lines[e.line - 1], (e, lines)
            assert 0 <= e.strip < 100
        assert series_files(folder)[1:] == [e.path for e in entries]
        unlisted_patches(folder)
        OUTCOMES["series"]["accepted"] += 1


# -- the command line ----------------------------------------------------------------------

ARGV_RECIPES = ["fixtures/host.yaml", "fixtures/kernel.yaml", "fixtures/guest.yaml",
                "fixtures/nested/diamond.yaml", "xen-host", "base"]
#: (relative to the world folder; no absolute path: `ci -o PATH` writes there)
ARGV_BROKEN = ["broken/yaml-syntax.yaml", "broken/multi-error.yaml", "missing.yaml", "",
               "\x00", "r" * 300 + ".yaml", "fixtures", "fifo", "broken/cycle-a.yaml"]


@fuzz("argv")
@given(argv=rs.argv(tuple(ARGV_RECIPES), tuple(ARGV_BROKEN)))
@example(argv=["validate", "r" * 300 + ".yaml"])
@example(argv=["plan", "a" * 5000])
@example(argv=["validate", "\udcff.yaml"])
@example(argv=["plan", "--cache-dir", "a\x00b", "fixtures/kernel.yaml"])
@example(argv=["ci", "gitlab", "fixtures/kernel.yaml", "-o", "fifo"])
@example(argv=["verify-release", "r" * 300])
@example(argv=["verify-release", "fixtures", "--keyring", "k" * 300])
def test_argv(world: World, argv: list[str]) -> None:
    """Fuzzed command lines: exit 0 or 2 and a message, never a traceback (nothing that
    builds, boots or connects: build/test/boot only ever see recipes that do not load)."""
    if "--debug" in argv:  # --debug shows tracebacks on purpose
        return
    if "ci" in argv and any(os.path.isabs(a.split("=", 1)[-1]) for a in argv):
        return  # `ci -o /ABS` writes there: only ever into the world folder
    with time_limit(CASE_LIMIT):
        code, out, err = run_cli(argv)
    if argv[:1] == ["verify-release"] and code == 1 and "FAILED" in out:
        # a folder that is no release fails its verification: exit 1 by design
        assert "Traceback" not in out + err and "internal error" not in err, err
        OUTCOMES["argv"]["exit 1 (no release)"] += 1
        return
    check_cli_output(code, out, err)
    assert stat.S_ISFIFO((world.root / "fifo").stat().st_mode), "the FIFO was replaced"
    OUTCOMES["argv"][f"exit {code}"] += 1


# -- real subprocesses ---------------------------------------------------------------------


def run_subprocess(world: World, argv: list[str]) -> None:
    try:
        proc = subprocess.run([str(XENFORGE), *argv], cwd=world.root, capture_output=True,
                              timeout=SUBPROCESS_LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"xenforge {argv!r} hung (over {SUBPROCESS_LIMIT}s)") from None
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    check_cli_output(proc.returncode, out, err)
    OUTCOMES["subprocess"][f"exit {proc.returncode}"] += 1


@pytest.mark.skipif(not XENFORGE.exists(), reason="no .venv/bin/xenforge: run ci/setup-host.sh")
@fuzz("subprocess", deadline_ms=None)
@given(case=st.one_of(rs.cases(), rs.mutated_cases()),
       command=st.sampled_from(["validate", "plan"]),
       args=rs.argv(tuple(ARGV_RECIPES), tuple(ARGV_BROKEN)), use_args=st.integers(0, 3))
def test_cli_subprocess(world: World, case: rs.Case, command: str, args: list[str],
                        use_args: int) -> None:
    """The installed console script on fuzzed recipes (validate, plan) and command lines."""
    recipe = world.write(case.files)
    if use_args == 0 and "--debug" not in args:
        run_subprocess(world, [a.replace("\x00", "") for a in args])
    elif command == "plan":
        run_subprocess(world, ["plan", "--no-remote-cache", str(recipe)])
    else:
        run_subprocess(world, ["validate", str(recipe)])


def test_the_sample_is_big_enough() -> None:
    """CI's sample is at least 2,000 cases; the full run's shares add up."""
    assert sum(CI_EXAMPLES.values()) >= 2000
    assert abs(sum(WEIGHTS.values()) - 1) < 1e-9
    assert sys.version_info >= (3, 11)
