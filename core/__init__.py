"""What every package shares and nothing else: the workspace layout, atomic file writes, strict weight
loading and the command-line options common to every subcommand. Imports no other package of ours."""
