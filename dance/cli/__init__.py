"""The command line: the `dance` command (:mod:`dance.cli.app`), recipes read from TOML with
``key=value`` overrides (:mod:`dance.cli.recipe`), run folders and CPU threads."""
