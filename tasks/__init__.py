"""Job specs and suites (TOML), installed as the package data ``losscli.tasks``."""
