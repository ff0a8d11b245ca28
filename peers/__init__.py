"""The runnable nodes. Start with ``peer.py`` and ``validator.py`` (each role's window as a list of
phases) and ``behaviours.py`` (the honest peer and the adversaries); below them ``node/`` (what both
roles are made of), ``network/`` (what nodes exchange), ``ops/`` (what operators see); above them
``sim/`` (``gauntlet simulate``) and ``cli/`` (the ``gauntlet`` command). CONTRIBUTING.md has the map."""
