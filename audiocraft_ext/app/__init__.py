"""The application: Hydra's entry point and its one job (export, ``mode=inspect``,
``mode=list``), the demo XPs, composition errors explained, the sweep summary. The only
package that imports Hydra; the job, which imports torch, is imported only when it runs."""

from .cli import main

__all__ = ["main"]
