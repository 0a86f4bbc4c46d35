"""The README's command reference, generated from each console script's own argparse parser so it cannot drift.

    python -m stprompt.clidoc                     print the reference
    python -m stprompt.clidoc --write README.md   replace the text between the markers with it
    python -m stprompt.clidoc --check README.md   exit 1 (naming the commands) when the README is out of date

Every console script of the package (pyproject's [project.scripts] in a checkout, the installed metadata
otherwise) must expose `build_parser()` beside its entry point. Help is rendered at a fixed width with colour off:
argparse wraps by the terminal's width, and the reference must not depend on who generated it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path
from unittest import mock

BEGIN, END = "<!-- cli:begin -->", "<!-- cli:end -->"
COLUMNS = 100  # argparse wraps help at COLUMNS - 2
REGENERATE = "python -m stprompt.clidoc --write README.md"
NOTE = f"<!-- generated from each command's parser by `{REGENERATE}`: edit the parsers, not this section -->"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def console_scripts() -> dict[str, str]:
    """{command: "module:function"} of stprompt's console scripts, sorted by command."""
    scripts: dict[str, str] | None = None
    if _PYPROJECT.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: read the installed metadata instead
            tomllib = None
        if tomllib is not None:
            doc = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))
            if doc.get("project", {}).get("name") == "stprompt":
                scripts = dict(doc["project"].get("scripts", {}))
    if scripts is None:
        from importlib.metadata import entry_points

        scripts = {
            ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.value.startswith("stprompt.")
        }
    return dict(sorted(scripts.items()))


def parser_for(target: str) -> argparse.ArgumentParser:
    """The parser of the console script whose entry point is `target` ("package.module:main")."""
    module = importlib.import_module(target.split(":", 1)[0])
    build = getattr(module, "build_parser", None)
    if not callable(build):
        raise RuntimeError(f"{module.__name__} has no build_parser(): every console script needs one (clidoc)")
    return build()


def render_help(command: str, parser: argparse.ArgumentParser) -> str:
    """`command --help` as a fixed-width terminal would show it, without colour or trailing spaces."""
    parser.prog = command
    env = {"COLUMNS": str(COLUMNS), "NO_COLOR": "1", "PYTHON_COLORS": "0"}
    with mock.patch.dict(os.environ, env):
        os.environ.pop("FORCE_COLOR", None)
        text = parser.format_help()
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"


def render_blocks() -> dict[str, str]:
    """{command: its markdown block} for every console script."""
    blocks = {}
    for command, target in console_scripts().items():
        blocks[command] = f"### {command}\n\n```text\n{render_help(command, parser_for(target))}```\n"
    return blocks


def render() -> str:
    """The whole section between the markers (markers included)."""
    return "\n".join([BEGIN, NOTE, "", *render_blocks().values(), END])


def section(text: str) -> str:
    """The generated section of a README (markers included); ValueError when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} section")
    return text[start : end + len(END)]


def replace_section(text: str, new: str) -> str:
    old = section(text)
    return text.replace(old, new, 1)


def stale_commands(text: str) -> list[str]:
    """Commands whose block in `text` differs from their current --help (or is missing, or is no longer one)."""
    current = section(text)
    blocks = render_blocks()
    headings = re.findall(r"^### (\S+)$", current, re.M)
    stale = [command for command, block in blocks.items() if block not in current]
    stale += [command for command in headings if command not in blocks]
    if not stale and current != render():
        stale.append("(the section around the blocks)")
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stprompt.clidoc", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="README", help="replace the section between the markers in this file")
    mode.add_argument("--check", metavar="README", help="exit 1 when this file's section is out of date")
    args = p.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_section(path.read_text(encoding="utf-8"), render()), encoding="utf-8")
        return 0
    if args.check:
        stale = stale_commands(Path(args.check).read_text(encoding="utf-8"))
        if stale:
            print(f"{args.check}: command reference out of date for {', '.join(stale)}; run {REGENERATE}",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
