"""Export an AudioCraft training checkpoint to a release folder that stock AudioCraft loads.

    python export_app.py                                   # demo: tiny XP, exported end to end
    python export_app.py input=checkpoint input.path=/path/to/xps/SIG/checkpoint.th
    python export_app.py input=xp input.dora_dir=DIR input.sig=SIG state=best
    python export_app.py --help                            # groups, options and defaults

The same command as ``audiocraft-export`` and ``python -m audiocraft_ext`` once installed;
this file lets a checkout run it without installing anything.
"""

from audiocraft_ext.app.cli import main

if __name__ == "__main__":
    main()
