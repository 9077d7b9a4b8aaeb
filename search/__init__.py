"""The search pipeline shared by the API, the CLI and the offline evaluation."""
