"""The commands of the CLI: each wires the core and the shell into one job.

Above ``shell`` and ``selfupdate`` (tests/test_architecture.py holds the layer order):
``nodecmd`` (``p2pupdate node``), ``publish``, ``controlcmd`` and ``versionscmd`` (the
control commands), ``selfupdatecmd`` (``release`` and ``self``).
"""
