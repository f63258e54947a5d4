"""One module per ``mmgen`` subcommand (see ``mmgen.cli``)."""
