"""The command line: the `dance` command (:mod:`dance.cli.app`), recipes read from TOML with
``key=value`` overrides and resolved against the installed plugins (:mod:`dance.cli.recipe`), and
the CPU threads torch uses (:mod:`dance.cli.threads`)."""
