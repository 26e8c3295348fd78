"""The command line's exit statuses, defined once: app.py's checks of the flags, ui.cli's commands and the
experiment runner (`pipelines.experiments.cli`) return these. Here, not in `ui`, because the experiment
runner is part of the engine and the engine never imports `ui`.

2 for bad input is also what argparse exits with for a flag it cannot parse."""
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
