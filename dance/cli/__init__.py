"""The command line: the `dance` command (:mod:`dance.cli.app`), recipes read from TOML with
``key=value`` overrides and resolved against the installed plugins (:mod:`dance.cli.recipe`), and
the CPU threads torch uses (:mod:`dance.cli.threads`)."""


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute
    # `dance` scripts installed before the command line became a package call dance.cli:main;
    # they keep working until the next `pip install -e .` points them at dance.cli.app:main.
    if name == "main":
        from dance.cli.app import main

        return main
    raise AttributeError(f"module 'dance.cli' has no attribute {name!r}")
