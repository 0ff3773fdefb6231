"""One module per ``qfleet`` verb: ``HELP``, ``configure(parser)``, ``run(args) -> dict``."""
