"""The help formatter every stp-* command uses: defaults shown, except where there is none to show.

argparse's ArgumentDefaultsHelpFormatter prints "(default: None)" for options whose default is decided later (the
bundle's threshold, the manifest's batch); those options say in their help where the value comes from instead.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to an option's help unless X is None, False for a flag, or already mentioned."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or (action.default is False and action.nargs == 0):
            return action.help
        return super()._get_help_string(action)
