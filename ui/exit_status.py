"""The command line's exit statuses: app.py's checks of the flags and ui.cli's commands return these.

2 for bad input is also what argparse exits with for a flag it cannot parse."""
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
