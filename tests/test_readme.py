"""The README's quickstart is what CI runs, and every console script it names exists."""

import re
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_is_exactly_two_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    install, test_command = commands[1].split(" && ", 1)
    assert install == 'pip install -e ".[dev]"'
    ci = (ROOT / ".ci/run").read_text()
    assert test_command in ci and '-e ".[dev]"' in ci


def test_commands_in_readme_are_console_scripts():
    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("stprompt.")}
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(stp-[a-z]+)", text))
    assert "stp-demo" in quickstart_commands()[0]
    assert named <= set(scripts) | {"stp-tiny"}  # stp-tiny is a CLIP config, named - set(scripts)


def test_command_reference_is_the_current_help():
    from stprompt import clidoc

    text = (ROOT / "README.md").read_text()
    stale = clidoc.stale_commands(text)
    assert not stale, (
        f"README.md's command reference differs from the --help of {', '.join(stale)}; "
        f"regenerate it: {clidoc.REGENERATE}"
    )
    reference = text.split("\n## Command reference\n", 1)[1]
    assert clidoc.BEGIN in reference  # the generated section sits under its heading, near the end
    assert re.findall(r"^### (\S+)$", clidoc.section(text), re.M) == list(clidoc.console_scripts())


def test_command_reference_does_not_depend_on_the_terminal(monkeypatch):
    from stprompt import clidoc

    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    narrow = clidoc.render()
    monkeypatch.setenv("COLUMNS", "250")
    assert clidoc.render() == narrow and "\x1b[" not in narrow
    assert all(len(line) <= clidoc.COLUMNS for line in narrow.splitlines() if not line.startswith(("<!--", "usage:")))


def test_every_console_script_exposes_build_parser():
    from stprompt import clidoc

    for command, target in clidoc.console_scripts().items():
        assert clidoc.parser_for(target).format_usage(), command
