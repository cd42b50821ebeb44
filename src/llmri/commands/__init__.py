"""One module per ``llmri`` subcommand (see llmri.cli)."""
