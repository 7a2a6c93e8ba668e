"""Call the command line in-process, as the scripts do: ``run("train", argv)`` is ``namegen train ...``."""

from namegen.cli import main


def run(command: str, argv=None) -> int:
    return main([command, *[str(a) for a in (argv or [])]])
