"""`xenforge validate` and `xenforge schema` against broken and valid recipes.

Every file in tests/recipes/broken/ holds one mistake (multi-error.yaml holds several) and
says what must be reported, as comments::

    # expect: <part of the message> @ <field path, or - for none> line <N> [in <file>]
    # hint: <part of the hint>

The test runs the real CLI and checks each expected problem appears as
``<file>:<line>: <field path>: ...<message>...``, that nothing else is reported, exit code 2
and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from xenforge.cli import app as cli
from xenforge.core.errors import ValidationFailed
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "recipes" / "broken"
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
XENFORGE = REPO / ".venv" / "bin" / "xenforge"

_EXPECT = re.compile(r"^# expect: (?P<msg>.+) @ (?P<path>\S+) line (?P<line>\d+)"
                     r"(?: in (?P<file>\S+))?\s*$")
_HINT = re.compile(r"^# hint: (?P<hint>.+?)\s*$")


@dataclass
class Expect:
    message: str
    path: str  # "" when the problem is about the whole file
    line: int
    file: Path


def _expectations(recipe: Path) -> tuple[list[Expect], list[str]]:
    expects, hints = [], []
    for text in recipe.read_text().splitlines():
        if m := _EXPECT.match(text):
            file = recipe.parent / m["file"] if m["file"] else recipe
            path = "" if m["path"] == "-" else m["path"]
            expects.append(Expect(m["msg"], path, int(m["line"]), file))
        elif m := _HINT.match(text):
            hints.append(m["hint"])
    return expects, hints


def _shown(path: Path) -> str:
    """How problems name a file: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _problem_lines(output: str) -> list[str]:
    return [ln.removeprefix("error: ") for ln in output.splitlines()
            if ln and not ln.startswith(" ") and not re.match(r"^\d+ problems? found$", ln)]


def _check_report(recipe: Path, output: str) -> None:
    expects, hints = _expectations(recipe)
    assert expects, f"{recipe.name} has no `# expect:` comment"
    assert "Traceback" not in output
    problems = _problem_lines(output)
    for e in expects:
        head = f"{_shown(e.file)}:{e.line}: " + (f"{e.path}: " if e.path else "")
        hits = [p for p in problems if p.startswith(head) and e.message in p[len(head):]]
        assert hits, (f"{recipe.name}: expected a problem starting {head!r} "
                      f"containing {e.message!r}; got:\n{output}")
    for h in hints:
        assert f"hint: {h}" in output or h in output, f"{recipe.name}: hint {h!r} missing"
    # one mistake, one message: no follow-on noise
    assert len(problems) == len(expects), f"{recipe.name}: unexpected problems:\n{output}"
    n = len(expects)
    assert f"{n} problem{'s' if n != 1 else ''} found" in output


BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_enough_distinct_mistakes() -> None:
    messages = {e.message for f in BROKEN_FILES for e in _expectations(f)[0]}
    assert len(BROKEN_FILES) >= 19 and len(messages) >= 18


@pytest.mark.parametrize("recipe", BROKEN_FILES, ids=[f.stem for f in BROKEN_FILES])
def test_broken_recipe_in_process(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(recipe.relative_to(REPO))])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "ok" not in out.split()
    _check_report(recipe, err)


def test_multiple_mistakes_are_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = BROKEN / "multi-error.yaml"
    assert len(_expectations(recipe)[0]) >= 5
    assert cli.main(["validate", str(recipe)]) == 2
    _check_report(recipe, capsys.readouterr().err)


def test_several_recipes_in_one_call_report_every_file(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    good, bad1, bad2 = FIXTURES / "kernel.yaml", BROKEN / "bad-size.yaml", BROKEN / "bad-name.yaml"
    assert cli.main(["validate", str(good), str(bad1), str(bad2)]) == 2
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert f"{_shown(bad1)}:12: images.guest.size:" in err
    assert f"{_shown(bad2)}:4: name:" in err
    assert "2 problems found" in err


def test_broken_recipes_as_subprocess() -> None:
    """The installed console script: exit code 2, every file's problems, no traceback."""
    if not XENFORGE.exists():
        pytest.skip(f"{XENFORGE} is missing: run ci/setup-host.sh")
    proc = subprocess.run([str(XENFORGE), "validate", *map(str, BROKEN_FILES)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for recipe in BROKEN_FILES:
        for e in _expectations(recipe)[0]:
            head = f"{_shown(e.file)}:{e.line}: " + (f"{e.path}: " if e.path else "")
            assert any(ln.removeprefix("error: ").startswith(head) and e.message in ln
                       for ln in proc.stderr.splitlines()), f"{recipe.name}: {head} missing"


def test_missing_recipe_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "tests/recipes/no-such-recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no-such-recipe.yaml: recipe not found" in err
    assert "Traceback" not in err


# -- valid recipes -----------------------------------------------------------------------

FIXTURE_RECIPES = sorted([*FIXTURES.glob("*.yaml"), *FIXTURES.glob("nested/*.yaml")])


@pytest.mark.parametrize("recipe", FIXTURE_RECIPES,
                         ids=[f.relative_to(FIXTURES).as_posix() for f in FIXTURE_RECIPES])
def test_fixture_recipe_is_valid(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(recipe)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{recipe}: ok" in out


REPO_RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", REPO_RECIPES, ids=[f.stem for f in REPO_RECIPES])
def test_repo_recipe_is_valid(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(recipe)])
    assert code == 0, capsys.readouterr().err


def test_extends_merges_mappings_and_replaces_sources() -> None:
    from xenforge.recipe.load import load_recipe
    from xenforge.sources.specs import AptSource, UrlSource

    loaded = load_recipe(FIXTURES / "override-source.yaml")
    r = loaded.recipe
    assert loaded.name == "mini-override"
    assert isinstance(r.hypervisor and r.hypervisor.source, UrlSource)
    assert r.hypervisor is not None and r.hypervisor.debug is True  # inherited
    assert isinstance(r.kernels["dom0"].source, AptSource)
    assert r.kernels["dom0"].fragments[:2] == ["base", "dom0"]  # inherited
    assert sorted(r.kernels) == ["dom0"]  # `guest: null` dropped the inherited kernel
    assert r.guests == []
    assert r.images["dom0"].size == 4096  # `size:` (empty) means the default
    assert r.images["dom0"].formats == ["raw", "qcow2"]


def test_inherited_paths_stay_relative_to_the_file_that_wrote_them() -> None:
    from xenforge.recipe.load import load_recipe

    r = load_recipe(FIXTURES / "nested" / "child.yaml").recipe
    assert r.kernels["dom0"].line == FIXTURES / "kernel_patches" / "mini"
    assert r.kernels["dom0"].fragments == ["base", FIXTURES / "extra.config"]
    assert r.extends == [FIXTURES / "kernel.yaml"]


def test_a_diamond_of_extends_is_not_a_cycle() -> None:
    from xenforge.recipe.load import load_recipe

    r = load_recipe(FIXTURES / "nested" / "diamond.yaml").recipe
    assert r.description == "left"
    assert r.kernels["dom0"].base == "defconfig"  # right.yaml comes later and wins
    assert r.kernels["dom0"].fragments == ["base", "dom0", FIXTURES / "extra.config"]


# -- JSON Schema ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "xenforge.cli", "schema"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_schema_is_a_valid_json_schema(schema: dict[str, object]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = schema["properties"]
    assert isinstance(props, dict)
    assert {"schema", "extends", "hypervisor", "kernels", "images", "guests", "iso",
            "tests"} <= set(props)
    assert schema.get("additionalProperties") is False
    # a file states its format version unless it extends one that does
    assert schema.get("anyOf") == [{"required": ["schema"]}, {"required": ["extends"]}]


@pytest.mark.parametrize("recipe", [*FIXTURE_RECIPES, *REPO_RECIPES],
                         ids=[f"{f.parent.name}/{f.stem}" for f in [*FIXTURE_RECIPES,
                                                                   *REPO_RECIPES]])
def test_valid_recipes_match_the_schema(schema: dict[str, object], recipe: Path) -> None:
    data = yaml.safe_load(recipe.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]
    assert not errors, f"{recipe.name}: " + "; ".join(errors)


@pytest.mark.parametrize("name,mistake", [
    ("unknown-top-key.yaml", "hypervisr"),
    ("unknown-nested-key.yaml", "fragmnts"),
    ("wrong-type.yaml", "lots"),
    ("bad-schema-version.yaml", "schema"),
    ("missing-required.yaml", "'schema' is a required property"),
    ("source-two-kinds.yaml", "source"),
])
def test_schema_rejects_structural_mistakes(schema: dict[str, object], name: str,
                                            mistake: str) -> None:
    """Unknown keys and wrong types are visible to an editor (path existence is not)."""
    data = yaml.safe_load((BROKEN / name).read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert errors, f"the schema accepts {name}"
    texts = [e.message for err in errors for e in (err, *err.context)]
    paths = [str(p) for err in errors for p in err.absolute_path]
    assert any(mistake in t for t in texts) or mistake in paths, texts


def test_extends_reads_each_file_once_and_refuses_duplicates_and_depth(tmp_path: Path
                                                                       ) -> None:
    """A 4-way fan-out over 11 levels used to load 4^11 files: each file is read once now,
    a file listed twice in one extends is an error, and chains are bounded."""
    import time

    (tmp_path / "l0.yaml").write_text("schema: 1\ndescription: leaf\n")
    for i in range(1, 12):
        (tmp_path / f"l{i}.yaml").write_text(
            f"schema: 1\nextends: [l{i - 1}.yaml]\ndescription: level {i}\n")
    start = time.monotonic()
    assert load_recipe(tmp_path / "l11.yaml").recipe.description == "level 11"
    assert time.monotonic() - start < 5
    (tmp_path / "twice.yaml").write_text("schema: 1\nextends: [l0.yaml, l0.yaml]\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "twice.yaml")
    assert "twice.yaml:2: extends[1]: l0.yaml is listed twice in extends" in exc.value.render()
    for i in range(1, 20):
        (tmp_path / f"d{i}.yaml").write_text(
            f"schema: 1\nextends: [{'d' + str(i - 1) if i > 1 else 'l0'}.yaml]\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "d19.yaml")
    assert "extends nests deeper than 16 files" in exc.value.render()
    # a diamond (two paths to one base) is fine: read once, merged once
    (tmp_path / "a.yaml").write_text("schema: 1\nextends: [l0.yaml]\n")
    (tmp_path / "b.yaml").write_text("schema: 1\nextends: [l0.yaml]\n")
    (tmp_path / "top.yaml").write_text("schema: 1\nextends: [a.yaml, b.yaml]\n")
    assert load_recipe(tmp_path / "top.yaml").recipe.description == "leaf"


@pytest.mark.parametrize("special", ["/dev/zero", "/", "fifo"])
def test_special_files_and_wrong_kinds_of_path_are_refused_at_once(tmp_path: Path,
                                                                   special: str) -> None:
    """/dev/zero as a spec, a folder as a fragment, a FIFO as a recipe: a clear problem,
    never a hang or an out-of-memory."""
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
        special = str(tmp_path / "fifo")
    (tmp_path / "r.yaml").write_text(f"schema: 1\nhypervisor: {{spec: {special}}}\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "r.yaml")
    assert "hypervisor.spec" in exc.value.render()
    assert "not a regular file" in exc.value.render()
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(Path(special))
    assert "not a regular file" in exc.value.render()


def test_a_huge_yaml_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of NUL
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(big)
    assert "larger than a recipe can be" in exc.value.render()


@pytest.mark.parametrize("field,value,says", [
    ("elements", '["-o/tmp/x"]', "elements[0]"),
    ("packages", '["a,b"]', "packages[0]"),
    ("packages", '["vim; rm -rf /"]', "packages[0]"),
])
def test_names_that_reach_an_argv_are_checked(tmp_path: Path, field: str, value: str,
                                             says: str) -> None:
    """An element or package name is never an option or two names in diskimage-builder's
    command line."""
    (tmp_path / "r.yaml").write_text(
        f"schema: 1\nimages:\n  g:\n    role: guest\n    {field}: {value}\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "r.yaml")
    assert f"images.g.{says}" in exc.value.render()


def test_a_file_name_that_is_no_recipe_name_needs_a_name(tmp_path: Path) -> None:
    (tmp_path / "...yaml").write_text("schema: 1\n")
    with pytest.raises(ValidationFailed) as exc:
        load_recipe(tmp_path / "...yaml")
    assert "no valid name ('..'" in exc.value.render() and "set `name:`" in exc.value.render()
    (tmp_path / "...yaml").write_text("schema: 1\nname: dots\n")
    assert load_recipe(tmp_path / "...yaml").name == "dots"
