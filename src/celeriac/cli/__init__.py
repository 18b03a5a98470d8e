"""The `celeriac` command."""
