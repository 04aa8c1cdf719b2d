"""The test suite, a package so that its modules import their shared code as
``tests.support`` (pytest puts the project folder on sys.path, as ``python -m`` does for the
fuzz worker)."""
