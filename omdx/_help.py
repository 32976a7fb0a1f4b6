"""Help text and argument types for the `omdx` console script's options."""

import argparse


class HelpWithDefaults(argparse.HelpFormatter):
    """argparse help that shows each option's default where it has one (not `None` or a
    flag's `False`, which `argparse.ArgumentDefaultsHelpFormatter` would print too)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        if "%(default)" in text:
            return text
        if isinstance(default, list | tuple):  # as typed on the command line
            return text + f" (default: {' '.join(map(str, default))})"
        return text + " (default: %(default)s)"


def positive_int(text: str) -> int:
    """An argparse type: a positive int, or an error that says so."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value
