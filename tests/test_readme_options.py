"""README's option tables are the command line's own: every option of every job, as ``--help`` prints it."""
from pathlib import Path

import click
import pytest

from topoprune.cli import main as cli

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("analyze", "train", "oneshot", "compact")


def option_table(name: str) -> str:
    """The markdown table of ``topoprune NAME``'s options: flags and metavar, then the help text."""
    cmd = cli.commands[name]
    ctx = click.Context(cmd, info_name=name)
    rows = ["| option | what it does |", "|---|---|"]
    for param in cmd.params:
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record:
            flags, text = (" ".join(s.split()).replace("|", "\\|") for s in record)
            rows.append(f"| `{flags}` | {text} |")
    return "\n".join(rows)


@pytest.mark.parametrize("name", COMMANDS)
def test_readme_lists_every_option_of_the_command(name):
    block = f"<summary>Every option of <code>topoprune {name}</code></summary>\n\n{option_table(name)}\n\n</details>"
    assert block in README.read_text(), f"README's table for topoprune {name} differs from --help; it is:\n{block}"
