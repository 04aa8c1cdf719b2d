"""The project's scripts: run as files (their caches are keyed by their own file's sha256);
imported as ``scripts.<name>`` by the tests that reuse their functions."""
