"""`tofgan --help` lists every command, a typo is answered with the nearest command and a non-zero exit,
`tofgan fit --help` names the suite's classes (console script, as a user runs it), and sub-runs started from
Python inside a `tofgan <tool>` process print no LightningCLI warning."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cli import COMMANDS, TOOL_COMMANDS, _tool_commands, main
from tests.cli_helpers import CONFIGS

TOFGAN = str(Path(sys.executable).with_name("tofgan"))


def tofgan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TOFGAN, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_a_description() -> None:
    proc = tofgan("--help")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= set(lines), set(COMMANDS) - set(lines)
    assert all(len(lines[c].split()) > 3 for c in COMMANDS)  # a description after each name
    assert set(_tool_commands()) == set(TOOL_COMMANDS)  # every registered tool has its line


def test_typo_suggests_the_nearest_command_and_fails() -> None:
    proc = tofgan("fitt", "--config", "x.yaml")
    assert proc.returncode == 2
    assert "Did you mean 'fit'" in proc.stderr and "tofgan --help" in proc.stderr


@pytest.mark.parametrize(("typo", "nearest"),
                         [("synthesise", "'synthesize'"), ("domain_extractor", "'domain-extractor'")])
def test_tool_typos_too(typo: str, nearest: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([typo])
    assert stop.value.code == 2 and f"Did you mean {nearest}" in capsys.readouterr().err


def test_no_command_prints_the_overview_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "fit" in capsys.readouterr().err


def test_fit_help_names_the_suite_classes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in ("lightning_modules.wgan.WGANGP", "lightning_modules.dcgan.DCGAN",
                 "lightning_modules.segmentation.SegmentationModule", "datamodules.gan_data.GANPatchDataModule",
                 "datamodules.segmentation_data.SegmentationDataModule", "--allow_resume_changes"):  # fmt: skip
        assert name in out, name


def test_tool_help_is_named_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["select", "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: tofgan select")


def test_fit_from_python_inside_a_tool_process_does_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare/demo/grid-search call main([...]) while sys.argv holds the tool's own arguments."""
    monkeypatch.setattr(sys, "argv", ["tofgan", "compare", "--out_dir", "somewhere"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        main(["fit", "--config", str(CONFIGS / "trainer" / "cpu.yaml"), "--print_config"])
    assert not [w for w in caught if "args parameter" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("name", TOOL_COMMANDS)
def test_tool_options_have_descriptions(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every option of `tofgan <tool> --help` has a description (an `Args:` entry in the tool's docstring)."""
    import inspect

    import docstring_parser

    fn = _tool_commands()[name]
    documented = {p.arg_name for p in docstring_parser.parse(inspect.getdoc(fn) or "").params}
    documented |= {n for p in documented for n in p.replace(" ", "").split("/")}  # "monitor / mode: …"
    assert set(inspect.signature(fn).parameters) <= documented, set(inspect.signature(fn).parameters) - documented
    if name in ("simulate", "render-tof"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "{pegasus,1000plus}" in capsys.readouterr().out  # the profiles as allowed values
