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
