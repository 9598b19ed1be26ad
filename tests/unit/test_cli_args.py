"""Bad command-line values are usage errors (exit 2) in one line, never a traceback, and an
unexpected exception is reported as a xenforge bug in one line unless --debug."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenforge.cli import app as cli

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "xen-host.yaml")


@pytest.mark.parametrize("argv, says", [
    (["build", "-j", "-5", RECIPE], "'-5' is not a whole number of at least 1"),
    (["build", "-j", "0", RECIPE], "'0' is not a whole number of at least 1"),
    (["cache", "gc", "--older-than", "nan"], "'nan' is not a number of days"),
    (["cache", "gc", "--older-than=-1"], "'-1' is not a number of days"),
])
def test_bad_option_values_are_usage_errors(argv: list[str], says: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("size", ["1e400G", "-1G", "lots", "nanM"])
def test_bad_gc_sizes(size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["cache", "gc", "--dry-run", f"--max-size={size}",
                     "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--max-size: {size!r} is not a size" in err
    assert "Traceback" not in err


def test_global_options_after_a_cache_action(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cache", "ls", "--debug", "--cache-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "objects").is_dir()


def test_an_unexpected_error_is_one_line_naming_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_schema", boom)
    assert cli.main(["schema"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["schema", "--debug"])
