"""Gauntlet: permissionless, incentivised, communication-efficient training of language models.

The pure SparseLoCo optimizer lives in :mod:`gauntlet.sparseloco`; configuration in
:mod:`gauntlet.config`; the errors users catch in :mod:`gauntlet.errors`.
"""

__version__ = "0.2.0"
