"""Ledgerflow: the event-driven double-entry ledger core of a mobile wallet.

The one import name the project installs. Its subpackages are the repository's top-level
folders (`ledgerflow.contracts` is `contracts/`, and so on); docs/decisions/one-namespace.md
says how and why.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ledgerflow")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
