"""MkDocs hooks: what the site generates instead of writing it twice.

- `<!-- srscreen-commands -->` in a page becomes the command reference, read from the Typer app itself
  (Typer apps are Click groups), so the reference shows exactly the commands, arguments, options and
  help texts that `srscreen --help` shows.
- The figures under benchmarks/results/ (*.png) are served as figures/NAME.png, so a guide shows the
  file a benchmark script wrote, not a copy.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

MARKER = "<!-- srscreen-commands -->"
FIGURES = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, command_reference())


def command_reference() -> str:
    """One section per command, in the app's order: usage, help text, and a table of its parameters as
    `--help` words them."""
    import typer

    from srscreen.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="srscreen")
    sections = [_usage(group, root), _params(group, root)]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = command.context_class(command, info_name=name, parent=root)
        sections += [f"## {name}", _usage(command, ctx), _text(command.help or ""), _params(command, ctx)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _usage(command, ctx) -> str:
    return f"```text\n{command.get_usage(ctx)}\n```"


def _text(help_text: str) -> str:
    # Click's \b marks a paragraph it must not rewrap; Markdown keeps a line break before two spaces.
    lines = help_text.replace("\b\n", "").splitlines()
    return "\n".join(line.rstrip() + ("  " if line.strip() else "") for line in lines)


def _params(command, ctx) -> str:
    rows = []
    for param in command.get_params(ctx):
        if param.hidden:
            continue
        record = param.get_help_record(ctx)  # what `--help` prints for it
        if record is None:
            continue
        names, help_text = record
        rows.append(f"| `{names}` | {_cell(help_text)} |")
    if not rows:
        return ""
    return "| argument or option | what it does |\n|---|---|\n" + "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
